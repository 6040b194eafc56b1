package linux

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Chain and table names latch owns.
const (
	chainOut = "LATCH-OUT"
	chainIn  = "LATCH-IN"
	chainFwd = "LATCH-FWD"
	// chainPost is the mangle table's chain of the postrouting hook (from
	// POSTROUTING) that drops what the loopback return passed but leaves by
	// another interface (see MarkLoopbackExempt); with Config.ExemptLoopback.
	chainPost = "LATCH-POST"
	// nftPost is table inet latch's chain of the postrouting hook (chainPost).
	nftPost = "postrouting"
	// nftPostLocal is table inet latch's regular chain nftPost jumps to for
	// an untracked packet to a local address out another interface (see
	// untrackedPost): it drops the ones sent from this host.
	nftPostLocal = "postrouting-local"
	// Chains of the raw table for notrack (ruleSpec.notrack): from raw OUTPUT,
	// from raw PREROUTING, and the one the latter jumps to for a packet whose
	// local socket it found.
	chainRawOut = "LATCH-RAW-OUT"
	chainRawPre = "LATCH-RAW-PRE"
	chainRawSk  = "LATCH-RAW-SK"
	// Chains of table inet latch for notrack.
	nftRawOut = "rawout"
	nftRawPre = "rawpre"
	nftTable  = "latch" // family inet
	// Chains of table inet latch for the kernel fast path's UDP match.
	nftUDPFast      = "udpfast"
	nftUDPFastAllow = "udpfast_allow"
	// Chains of table inet latch for the kernel fast path's lease: fastlease
	// runs the lease program (a rule added over netlink) and on a match goes to
	// fastpass, which lets the SYN pass as rules 1 and 4 of iptablesRules do.
	nftFastLease = "fastlease"
	nftFastPass  = "fastpass"
	// udplease runs the lease program and on a match goes to udpfast.
	nftUDPLease = "udplease"
	// Chains of table inet latch for the sender stash (Config.FastSenderStash):
	// sendstash runs it (a rule added over netlink, which never matches: its
	// goto to sendstash_done, empty, is never taken) and returns.
	nftSendStash     = "sendstash"
	nftSendStashDone = "sendstash_done"
	// Chains of table inet latch for the socket pin (Config.FastSocketPin):
	// sockpin runs it (a rule added over netlink) on a packet of an allowed
	// flow and on a match goes to sockpin_pass, which accepts; sockpin_rec
	// runs it on a packet back from an allow verdict (which records the
	// packet's socket) and goes to sockpin_rec_done, empty, which returns.
	nftSockPin        = "sockpin"
	nftSockPinPass    = "sockpin_pass"
	nftSockPinRec     = "sockpin_rec"
	nftSockPinRecDone = "sockpin_rec_done"
)

// ruleSpec is what the ruleset must do.
type ruleSpec struct {
	queue          uint16
	inbound        bool
	failOpen       bool
	exemptLoopback bool
	dnsLogGroup    uint16 // NFLOG group DNS queries and responses are copied to; 0: none
	forward        bool   // also hold forwarded connections (LATCH-FWD)
	// fastUDP is the pinned socket filter program of the kernel fast path's UDP
	// match (Config.FastUDPMatch); "": none.
	fastUDP string
	// fastTCP: the kernel fast path decides TCP connects (Config.FastTCP): a
	// SYN with MarkFastAllow passes (rule 4). Without it the mark is left over
	// from an earlier daemon's fast path and the SYN is held.
	fastTCP bool
	// sockPin is the pinned socket filter program of the kernel fast path's
	// socket pin (Config.FastSocketPin): LATCH-OUT records, for a UDP (UDP-Lite,
	// ICMP echo) packet back from an allow verdict, its socket for its tuple,
	// and returns a later packet of an allowed flow of those protocols only if
	// it comes from that socket (7), else queues it; "": none.
	sockPin string
	// stash is the pinned socket filter program of the kernel fast path's
	// sender stash (Config.FastSenderStash): LATCH-OUT runs it (a match that
	// never matches) on every UDP datagram before the first rule that may
	// queue one, so that it records the socket of every datagram the queue
	// gets; "": none.
	stash string
	// lease is the pinned socket filter program of the kernel fast path's
	// lease (Config.FastLease): with fastTCP, a SYN passes by MarkFastAllow,
	// and with fastUDP the UDP match runs, only while it matches, that is
	// while the daemon lives; "": no check (a socket whose SYN was on its way
	// when the daemon died may connect again anywhere after).
	lease string
	// notrack keeps the kernel fast path's TCP flows out of conntrack (see
	// "Notrack" in doc.go): their packets are not tracked while their socket
	// carries MarkFastAllow, MarkFastFlow or MarkFastRedecide.
	notrack bool
	// noOptMatch: the kernel has no xt_u32 or no xt_ipv6header (iptables
	// only), so the ruleset cannot tell a TCP packet with IPv4 options or an
	// IPv6 routing header (a source route): LATCH-OUT drops every INVALID TCP
	// packet instead of resetting those with options and passing the rest
	// (see optionsRules). Start sets it only with fastTCP and notrack off: no
	// packet passes by a fast mark, whose reset needs the same matches.
	noOptMatch bool
}

// errNotrack wraps install's error when the ruleset could not keep the fast
// path's TCP flows out of conntrack (no socket match, no raw table).
var errNotrack = errors.New("the ruleset cannot keep the fast path's TCP flows out of conntrack")

// input says whether the ruleset needs the INPUT chain: to hold inbound connections,
// or to see DNS responses.
func (spec ruleSpec) input() bool { return spec.inbound || spec.dnsLogGroup != 0 }

// holdReplies says whether a chain holds what this host sends on a connectionless
// flow the peer opened (conntrack direction reply) while no verdict marked it: in
// the output chain when inbound connections are not held. A peer's datagram then
// opens the flow without a question, and the local program's answer is the first
// thing anyone decides: an outbound connection of that program. With inbound held,
// the peer's datagram was decided on the way in and its allow marked the flow.
func (spec ruleSpec) holdReplies(out bool) bool { return out && !spec.inbound }

// connectionOriented lists the IP protocols besides TCP whose replies answer a
// handshake the peer started (the kernel accepts the association, as it accepts a
// TCP connection), so they are not held as connectionless replies: SCTP (132) and
// DCCP (33).
var connectionOriented = []int{132, 33}

// errFastLease wraps install's error when the ruleset could not run the
// kernel fast path's lease program (no xt_bpf).
var errFastLease = errors.New("the ruleset cannot check the fast path's lease")

// errFastUDP wraps install's error when only the kernel fast path's UDP match could
// not be added: the rest of the ruleset is in place.
var errFastUDP = errors.New("the fast path's UDP match is not in the ruleset")

// firewall installs and removes latch's ruleset with one mechanism.
type firewall interface {
	name() string
	// install adds the ruleset; on error it leaves nothing behind.
	install(spec ruleSpec) error
	// remove deletes what install added (and, after install, whatever it had to create
	// to add it, such as an empty filter table).
	remove() error
	// leftover reports whether latch's chains exist, and the queue numbers they use.
	leftover() (exists bool, queues []uint16, err error)
	// removeLeftover deletes latch's chains and jumps whoever installed them.
	removeLeftover() error
	// optMatches reports whether the matches the source-route rules need
	// (optionsRules) load, without touching the installed ruleset.
	optMatches() error
}

// detectFirewall picks the mechanism: forced by name, or the first that works of
// native nftables queue, iptables-nft, iptables-legacy.
func detectFirewall(forced string, queue uint16) (firewall, error) {
	switch forced {
	case FirewallNftables:
		if err := probeNftQueue(queue); err != nil {
			return nil, fmt.Errorf("firewall %q: %w", forced, err)
		}
		return &nftFirewall{}, nil
	case FirewallIptablesNft, FirewallIptablesLegacy:
		fw, err := newIptables(forced)
		if err != nil {
			return nil, fmt.Errorf("firewall %q: %w", forced, err)
		}
		return fw, nil
	case "":
	default:
		return nil, fmt.Errorf("firewall %q: want %q, %q, %q or empty (detect)", forced, FirewallNftables, FirewallIptablesNft, FirewallIptablesLegacy)
	}
	var errs []error
	if err := probeNftQueue(queue); err == nil {
		return &nftFirewall{}, nil
	} else {
		errs = append(errs, fmt.Errorf("nftables: %w", err))
	}
	for _, kind := range []string{FirewallIptablesNft, FirewallIptablesLegacy} {
		fw, err := newIptables(kind)
		if err == nil {
			return fw, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", kind, err))
	}
	return nil, fmt.Errorf("no usable firewall mechanism: %w", errors.Join(errs...))
}

func run(stdin string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out.String(), nil
}

// probeNftQueue checks that native nftables can queue: a table with a queue rule is
// added and deleted in one transaction, so the probe leaves nothing behind either
// way. A control probe with a counter tells "no nft" from "no queue".
func probeNftQueue(queue uint16) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("nft not installed: %w", err)
	}
	probe := func(stmt string) error {
		script := fmt.Sprintf("add table inet latch_probe\nadd chain inet latch_probe c\nadd rule inet latch_probe c meta l4proto tcp %s\ndelete table inet latch_probe\n", stmt)
		_, err := run(script, "nft", "-f", "-")
		return err
	}
	if err := probe("counter"); err != nil {
		return fmt.Errorf("nftables unusable: %w", err)
	}
	if err := probe(fmt.Sprintf("queue num %d bypass", queue)); err != nil {
		return fmt.Errorf("the kernel cannot queue from nftables (nft_queue missing): %w", err)
	}
	return nil
}

// icmpException is a message that passes without a question because the network
// needs it, whoever sends it: the kernel sends these on its own, for no program.
type icmpException struct {
	typ  uint8 // ICMPv6 type; unused for IGMP
	hops uint8 // the TTL or hop limit the message must carry
}

// icmpExceptions lists what passes unheld besides errors about a known flow and
// answers to a peer's query: for IPv4 IGMP, for IPv6 neighbour discovery and MLD.
// Each is bound to the TTL or hop limit its RFC prescribes, which the kernel always
// uses and receivers check: IGMP and MLD go out with 1, so they never leave the
// link; neighbour discovery carries 255 (RFC 4861 receivers drop anything else).
//   - IGMP (RFC 2236, 3376): membership reports for the groups sockets joined;
//     without them a snooping switch or multicast router stops forwarding the
//     groups (mDNS, SSDP).
//   - 133-137, router and neighbour solicitation and advertisement, redirect (RFC
//     4861): IPv6 address resolution, reachability, duplicate address detection,
//     router discovery; without them no IPv6 packet reaches a neighbour.
//   - 130-132, 143, MLD query, report and done (RFC 2710, 3810): IPv6's IGMP, and
//     more: neighbour solicitations go to solicited-node multicast groups, which
//     snooping switches forward only to hosts that reported them.
//
// Everything else ICMP is held: echo, timestamp, address mask, extended echo (42,
// ICMPv6 160, RFC 8335), router discovery (9, 10), node information (139, 140),
// inverse neighbour discovery, multicast router discovery, and errors that concern
// no flow conntrack knows.
func icmpExceptions(v6 bool) []icmpException {
	if !v6 {
		return []icmpException{{hops: 1}}
	}
	return []icmpException{
		{133, 255}, {134, 255}, {135, 255}, {136, 255}, {137, 255},
		{130, 1}, {131, 1}, {132, 1}, {143, 1},
	}
}

// ---- iptables (nft-compat or legacy) ----

type iptablesFirewall struct {
	kind    string   // FirewallIptablesNft or FirewallIptablesLegacy
	restore []string // restore commands for IPv4, IPv6
	save    []string // iptables commands for IPv4, IPv6
	nftFam  []string // nftables families for IPv4, IPv6 (iptables-nft)
}

func newIptables(kind string) (*iptablesFirewall, error) {
	fw := &iptablesFirewall{kind: kind, nftFam: []string{"ip", "ip6"}}
	variant := "nft"
	want := "nf_tables"
	if kind == FirewallIptablesLegacy {
		variant, want = "legacy", "legacy"
	}
	for _, fam := range []string{"iptables", "ip6tables"} {
		cmd, restore := fam+"-"+variant, fam+"-"+variant+"-restore"
		if _, err := exec.LookPath(cmd); err != nil {
			// Older distributions ship only the plain names; accept them if -V says so.
			out, verr := run("", fam, "-V")
			if verr != nil || !strings.Contains(out, "("+want+")") && !(want == "legacy" && !strings.Contains(out, "nf_tables")) {
				return nil, fmt.Errorf("%s not installed", cmd)
			}
			cmd, restore = fam, fam+"-restore"
		}
		if _, err := run("", cmd, "-w", "-t", "filter", "-S", "OUTPUT"); err != nil {
			return nil, fmt.Errorf("%s unusable: %w", cmd, err)
		}
		fw.save = append(fw.save, cmd)
		fw.restore = append(fw.restore, restore)
	}
	return fw, nil
}

func (fw *iptablesFirewall) name() string { return fw.kind }

// legacyFilterPresent reports whether an iptables-legacy filter table exists in this
// network namespace, without creating one.
func legacyFilterPresent() bool {
	for _, f := range []string{"/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"} {
		if b, err := os.ReadFile(f); err == nil && slices.Contains(strings.Fields(string(b)), "filter") {
			return true
		}
	}
	return false
}

// createdMark tags a no-op rule at the end of LATCH-OUT that records which nftables
// objects iptables-nft created for latch (it creates tables and base chains on
// demand and leaves them behind), so that removal, even by Cleanup after a crash,
// deletes them again and the ruleset ends as it began.
const createdMark = "latch-created:"

// iptablesRules returns the iptables-restore input of one family (v6: IPv6). created
// lists the nftables objects ("table", "chain-OUTPUT", "chain-INPUT") iptables-nft
// will create for it. The jumps to the chains named in jumped exist already.
func (spec ruleSpec) iptablesRules(v6 bool, created []string, jumped map[string]bool) string {
	var b strings.Builder
	q := fmt.Sprintf("-j NFQUEUE --queue-num %d", spec.queue)
	if spec.failOpen {
		q += " --queue-bypass"
	}
	allow := fmt.Sprintf("-m mark --mark %#x/%#x", MarkAllow, MarkMask)
	lease := spec.leaseMatch()
	reject := fmt.Sprintf("-m mark --mark %#x/%#x", MarkReject, MarkMask)
	ctAllow := fmt.Sprintf("-m connmark --mark %#x/%#x", MarkAllow, MarkMask)
	unreach, icmpName := "icmp-port-unreachable", "icmp"
	if v6 {
		unreach, icmpName = "icmp6-port-unreachable", "ipv6-icmp"
	}
	b.WriteString("*filter\n")
	declare := func(name, hook string) {
		// With --noflush, declaring a chain that exists flushes it: a ruleset left by a
		// stopped daemon is replaced in the same transaction, never removed first.
		fmt.Fprintf(&b, ":%s - [0:0]\n", name)
		if !jumped[name] {
			fmt.Fprintf(&b, "-I %s 1 -j %s\n", hook, name)
		}
	}
	chain := func(name, hook, lo string, out bool) {
		if out {
			b.WriteString(spec.iptablesEarlyReturns(name, v6, lease))
		} else if hook == "INPUT" {
			b.WriteString(spec.iptablesEarlyReturnsIn(name))
		}
		if spec.exemptLoopback && out {
			// A flow born on lo from a source that is not this host's (an
			// IPV6_FREEBIND socket needs no privilege to send from any
			// IPv6 address) gets MarkLoopbackForged, before the loopback
			// exemption passes it (review18): the flow seems opened by
			// the remote host whose address the source is, and nothing
			// decided it. The address type last: a route lookup, only for
			// a new flow on lo. Only an entry without latch's mark
			// (review21): UDP calls every datagram of the opener's side
			// NEW until the other side answers, so a forged datagram
			// with the tuple of an entry a verdict allowed would
			// otherwise turn it into a forged flow.
			fmt.Fprintf(&b, "-A %s -o lo -m conntrack --ctstate NEW -m connmark --mark 0x0/%#x -m addrtype ! --src-type LOCAL -j CONNMARK --set-xmark %#x/%#x\n", name, MarkMask, MarkLoopbackForged, MarkMask)
		}
		if spec.exemptLoopback && out {
			// What leaves by lo to an address of this host. -o is the
			// interface of the route before the nat table's DNAT, which may
			// send the packet elsewhere (a port forward, a NodePort, a
			// container's published port reached by a local address):
			// then it is held like any packet out (review23, it passed
			// undecided). The address type only for DNAT'd packets (a
			// route lookup): a REDIRECT to a local port stays exempt.
			//
			// A new flow the returns pass (their conditions) gets
			// MarkLoopbackExempt first: the interface -o sees is the
			// one the output hook was called with, and a reroute by
			// mark during the hook (mangle, an nft route chain) sends
			// the packet elsewhere; LATCH-POST drops it there (review24).
			// Any packet of a flow without one of latch's marks, not only
			// a new one: a host that saves its packet mark into the
			// conntrack mark with the full mask (CONNMARK --save-mark,
			// nft `ct mark set meta mark`; routing by mark) erases it
			// mid-flow, and its next packet, rerouted, would leave
			// unmarked (review25, TestLoopbackExemptMarkSavedOver). Once
			// marked, a flow's packets fail the mark test.
			// And only a packet from a local address to a local address
			// (after DNAT): any program may send one packet over lo with
			// the tuple of a real flow of this host's (IPV6_FREEBIND,
			// a peer's address as its source), which must not make that
			// flow's entry a loopback flow's (review27: its next packet
			// out the veth was then held and decided as a new flow, and
			// denied: TestLoopbackExemptMarkedByForgedSYN). A real
			// loopback flow has local addresses both ways. Local or
			// anycast as the destination: with IPv6 forwarding the
			// host's own subnet-router anycast addresses are reached by
			// lo too, and their type is ANYCAST (unmarked, such a flow
			// rerouted by mark left undecided:
			// TestLoopbackExemptRerouteAnycastOut); a packet that leaves
			// by lo to an anycast address goes to this host.
			fmt.Fprintf(&b, "-A %s -o lo -m connmark --mark 0x0/%#x -m addrtype --src-type LOCAL --dst-type LOCAL,ANYCAST -j CONNMARK --set-xmark %#x/%#x\n", name, MarkMask, MarkLoopbackExempt, MarkMask)
			fmt.Fprintf(&b, "-A %s -o lo -m conntrack ! --ctstate DNAT -j RETURN\n", name)
			fmt.Fprintf(&b, "-A %s -o lo -m addrtype --dst-type LOCAL -j RETURN\n", name)
		} else if spec.exemptLoopback {
			fmt.Fprintf(&b, "-A %s %s lo -j RETURN\n", name, lo)
		}
		if spec.exemptLoopback && hook != "FORWARD" {
			// Whatever of such a flow leaves or arrives by another
			// interface (a local socket's datagrams to the remote host,
			// the reply direction of a flow nothing decided, which the
			// protocol's return below would pass with Config.Inbound;
			// the remote host's answers) is dropped: everything of a
			// loopback flow stays on lo (a transparent proxy's flow to a
			// local backend with the client's address, whose answers
			// policy routing brings back to lo). Before every rule that
			// may pass or queue it (MarkRedecideReply's tests a conntrack
			// mark other than 0).
			fmt.Fprintf(&b, "-A %s -m connmark --mark %#x/%#x -j DROP\n", name, MarkLoopbackForged, MarkMask)
			if !out {
				// A loopback-exempt flow's packet arriving by another
				// interface is a forgery (IPv6 has no martian-source
				// check: a host on the link sends from this host's
				// address): dropped, never decided (review26,
				// TestLoopbackExemptSpoofedPeerIn); decided, an allow
				// would save MarkAllow over the loopback mark.
				fmt.Fprintf(&b, "-A %s -m connmark --mark %#x/%#x -j DROP\n", name, MarkLoopbackExempt, MarkMask)
			}
		}
		own := func() {
			if out {
				// The exact value under MarkMask, not the bit: MarkFastRedecide
				// has it too. After the fast path's rules, whose marks are
				// others (most packets are a fast socket's, with notrack).
				fmt.Fprintf(&b, "-A %s -m mark --mark %#x/%#x -j RETURN\n", name, OwnMark, MarkMask)
			}
		}
		if out {
			b.WriteString(spec.iptablesOptionsRules(name, v6))
		} else if hook == "FORWARD" {
			b.WriteString(spec.iptablesRouteRules(name, v6, true))
		}
		if spec.notrack && hook != "FORWARD" {
			// A TCP packet of a socket the fast path allowed, which the raw table
			// kept out of conntrack (see "Notrack"): on its way (LATCH-OUT: the
			// socket's mark; LATCH-IN: the mark LATCH-RAW-SK gave it from its
			// socket's). LATCH-OUT: MarkFastAllow (the connect's SYN and
			// its retransmissions), MarkFastFlow but for a SYN (the
			// connection's other packets; a SYN with it is the socket's
			// next connect, which only the queue decides: 5). In LATCH-IN
			// a flow being decided again passes too: the peer's packets
			// pass until this host's next one is decided. Not in LATCH-FWD:
			// a forwarded packet has no local socket.
			if !out {
				// Not a SYN without ACK (bare, or with FIN or the like, which
				// conntrack would call INVALID but does not see): the peer's
				// half of a simultaneous open with a socket that kept a fast
				// mark (a dead daemon's sock_ops program cleared nothing at
				// its TCP_CLOSE; MarkFastRedecide is never cleared), which
				// would make the socket's SYN-ACK, not a bare SYN, pass LATCH-OUT
				// at 1: held and decided as any inbound connection. Not one
				// back from its verdict (NF_REPEAT with MarkAllow or
				// MarkReject in place of the socket's mark): 2 and 3 carry
				// it out; queued again, it would be decided again for ever.
				fmt.Fprintf(&b, "-A %s -p tcp -m tcp --tcp-flags SYN,ACK SYN -m conntrack --ctstate UNTRACKED -m mark ! --mark %#x/%#x -m mark ! --mark %#x/%#x %s\n", name, MarkAllow, MarkMask, MarkReject, MarkMask, q)
			}
			if out {
				// Only while the daemon lives (the lease): a socket
				// keeps MarkFastAllow when the daemon dies with its SYN
				// on its way, and may connect again anywhere.
				fmt.Fprintf(&b, "-A %s -p tcp -m conntrack --ctstate UNTRACKED -m mark --mark %#x/%#x%s -j RETURN\n", name, MarkFastAllow, MarkMask, lease)
			} else {
				fmt.Fprintf(&b, "-A %s -p tcp -m conntrack --ctstate UNTRACKED -m mark --mark %#x/%#x -j RETURN\n", name, MarkFastAllow, MarkMask)
			}
			if out {
				fmt.Fprintf(&b, "-A %s -p tcp -m tcp ! --tcp-flags SYN,ACK,RST,FIN SYN -m conntrack --ctstate UNTRACKED -m mark --mark %#x/%#x -j RETURN\n", name, MarkFastFlow, MarkMask)
			} else {
				for _, m := range []uint32{MarkFastFlow, MarkFastRedecide} {
					fmt.Fprintf(&b, "-A %s -p tcp -m conntrack --ctstate UNTRACKED -m mark --mark %#x/%#x -j RETURN\n", name, m, MarkMask)
				}
			}
		}
		own()
		// A packet of a flow already allowed (conntrack mark MarkAllow) leaves here,
		// before the rules below, which it would only walk to the same end (most
		// packets are of such flows): none of them acts on it but the allow rules,
		// whose CONNMARK then changes nothing, and the last RETURN. Not a packet
		// marked for a reset (MarkReject: a verdict or the fast path rejected it)
		// and not a TCP SYN, which the queue decides whatever the flow's mark (a
		// SYN conntrack puts on an allowed entry of the same 4-tuple is a new
		// connection); a flow being decided again has MarkRedecide, not MarkAllow.
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp ! --tcp-flags SYN,ACK,RST,FIN SYN %s -m mark ! --mark %#x/%#x -j RETURN\n", name, ctAllow, MarkReject, MarkMask)
		// stashed runs the sender stash on every UDP datagram that gets
		// this far (LATCH-OUT only), once, before the first rule below that
		// may queue one: by protocol alone, not by the queue rules' matches
		// on the flow's conntrack mark, which another CPU's verdict (or a
		// rule change's MarkRedecide) may change between a stash rule and
		// its queue rule, so that a datagram matched the queue rule but not
		// the stash rule before it and reached the daemon with no record
		// (review14: the daemon then credited the port's one sender). The
		// datagrams it runs on and no rule queues (flows from before latch)
		// leave records the LRU forgets.
		stashed := func() {
			if out && spec.stash != "" {
				fmt.Fprintf(&b, "-A %s -p udp -m bpf --object-pinned %s\n", name, spec.stash)
			}
		}
		pinned := ""
		if out && spec.sockPin != "" {
			// Only from the socket the flow was allowed for (the socket pin,
			// see Config.FastSocketPin): another socket on the same tuple
			// (another program that bound the local port the allowed socket
			// freed, or shares it with SO_REUSEPORT) is queued below.
			pinned = " -m bpf --object-pinned " + spec.sockPin
		}
		fmt.Fprintf(&b, "-A %s ! -p tcp %s -m mark ! --mark %#x/%#x%s -j RETURN\n", name, ctAllow, MarkReject, MarkMask, pinned)
		if hook != "FORWARD" {
			// A TCP packet conntrack cannot place (INVALID), but one with SYN
			// set (with FIN, RST or ACK too: LATCH-IN drops a peer's, see
			// below) and a packet marked MarkReject, leaves here too: none of the rules
			// below acts on it (they want a conntrack entry, conntrack NEW or
			// UNTRACKED, a SYN, MarkReject, or UDP) but the allow rules (2),
			// whose CONNMARK changes nothing without an entry, and the TCP
			// RETURN, so it would only walk them to the same end. Such is the
			// reset a fast socket sends after its TCP_CLOSE cleared its mark
			// (connect(AF_UNSPEC) of an established socket); the reset of
			// close(2) with SO_LINGER 0 or unread data keeps MarkFastFlow
			// (fastpath's fast_closed) and leaves untracked at 1 instead.
			// (LATCH-FWD drops INVALID TCP instead, see 8.)
			fmt.Fprintf(&b, "-A %s -p tcp -m tcp --tcp-flags SYN NONE -m conntrack --ctstate INVALID -m mark ! --mark %#x/%#x -j RETURN\n", name, MarkReject, MarkMask)
		}
		if hook != "FORWARD" {
			// A reset conntrack calls RELATED: the one a REJECT sends
			// (nf_send_reset attaches the rejected packet's entry, state
			// RELATED, direction the other way), which no socket can send
			// (its segments are looked up: ESTABLISHED, NEW or INVALID).
			// When the rejected segment was the reply direction's (a
			// forwarded flow's other side, or this host's side over
			// loopback, decided after a rule change: MarkRedecideReply),
			// the reset runs in the original direction on an entry still
			// marked MarkRedecide, and 6 held it: decided as a packet of
			// the flow, denied again, and the reject's reset never reached
			// the socket it was for (review16). LATCH-IN too: over
			// loopback (held with Config.ExemptLoopback off) the reset to
			// a local socket arrives with that entry, and 6 held it there.
			// A peer's reset is looked up (ESTABLISHED or INVALID). The
			// one other TCP conntrack calls RELATED: what the opener of a
			// connection a conntrack helper expects (ftp, sip; only where
			// a helper is assigned) sends before the first answer it sees
			// (its SYN, held at 5; a reset cannot open one). Its socket
			// sends a reset then only to an answer conntrack did not take
			// (INVALID, such as an ACK to its SYN_SENT): that passes here
			// undecided, as it passed before a rule change. A reset ends
			// the connection and carries nothing a peer reads (Linux
			// ignores a reset's payload; a socket never sends one, a raw
			// socket needs CAP_NET_RAW, which may set latch's marks
			// anyway) (review18).
			fmt.Fprintf(&b, "-A %s -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate RELATED -j RETURN\n", name)
		}
		if out && spec.fastUDP != "" {
			// The first datagram of a UDP flow nothing decided yet, not back from a
			// verdict: the kernel fast path's match (Config.FastUDPMatch) gives it
			// MarkAllow when a rule allowed its program's datagrams to its
			// destination under the rules in force, and the next two rules decide
			// the flow as they decide an allow from the queue.
			// The lease first: a dead daemon's UDP match decides nothing
			// (and would record nothing).
			fmt.Fprintf(&b, "-A %s -p udp -m conntrack --ctstate NEW -m connmark --mark 0x0/%#x -m mark --mark 0x0/%#x%s -m bpf --object-pinned %s -j MARK --set-xmark %#x/%#x\n",
				name, MarkMask, MarkMask, lease, spec.fastUDP, MarkAllow, MarkMask)
			if pinned != "" {
				// A datagram of an allowed flow from another socket than
				// the one its allow was for (the socket pin did not return
				// it at 7): most often a new socket that got the local port
				// of a closed one whose flow conntrack still remembers (a
				// program that opens a socket per exchange). The UDP match
				// decides it for its own socket's program as for a new
				// flow; a match records the new socket (next rule).
				fmt.Fprintf(&b, "-A %s -p udp %s -m mark --mark 0x0/%#x%s -m bpf --object-pinned %s -j MARK --set-xmark %#x/%#x\n",
					name, ctAllow, MarkMask, lease, spec.fastUDP, MarkAllow, MarkMask)
			}
		}
		if pinned != "" {
			// Back from an allow verdict (or the UDP match): the socket pin
			// records the packet's socket for its tuple (a rule without a
			// target: the match does the work).
			fmt.Fprintf(&b, "-A %s ! -p tcp %s%s\n", name, allow, pinned)
		} else if hook == "INPUT" && spec.sockPin != "" {
			// A peer's packet back from an allow verdict (Config.Inbound):
			// the socket pin records its reversed tuple for the first local
			// socket that answers on it.
			fmt.Fprintf(&b, "-A %s ! -p tcp %s -m bpf --object-pinned %s\n", name, allow, spec.sockPin)
		}
		fmt.Fprintf(&b, "-A %s %s -j CONNMARK --save-mark --nfmask %#x --ctmask %#x\n", name, allow, MarkMask, MarkMask)
		fmt.Fprintf(&b, "-A %s %s -j RETURN\n", name, allow)
		fmt.Fprintf(&b, "-A %s -p tcp %s -j REJECT --reject-with tcp-reset\n", name, reject)
		fmt.Fprintf(&b, "-A %s %s -j REJECT --reject-with %s\n", name, reject, unreach)
		stashed()
		if out && spec.exemptLoopback {
			// A packet of a flow the loopback exemption passed that leaves
			// by another interface now (its address moved to another host,
			// a route changed): decided like a new flow, after the verdict
			// rules, so that its allow (MarkAllow saved over the mark)
			// returns above; before, LATCH-POST dropped it undecided
			// (review25, TestLoopbackExemptMovedAddressDecided).
			fmt.Fprintf(&b, "-A %s -m connmark --mark %#x/%#x %s\n", name, MarkLoopbackExempt, MarkMask, q)
		}
		if pinned != "" {
			// A packet of an allowed flow that the socket pin did not
			// return at 7 (another socket than the one the flow was allowed
			// for, or a flow the pin does not know: allowed before this
			// daemon, or forgotten by its LRU map): decided for its own
			// socket's program, whose allow records that socket (2).
			fmt.Fprintf(&b, "-A %s ! -p tcp %s %s\n", name, ctAllow, q)
		}
		if out && spec.notrack {
			// A packet of a fast socket a rule change marked for deciding again
			// (Redecide), untracked: held and decided again, as a packet of a
			// conntrack flow marked MarkRedecide (6). After the verdict rules: a
			// verdict's packet carries MarkAllow or MarkReject instead.
			fmt.Fprintf(&b, "-A %s -p tcp -m conntrack --ctstate UNTRACKED -m mark --mark %#x/%#x %s\n", name, MarkFastRedecide, MarkMask, q)
		}
		if out && spec.fastTCP {
			// A SYN the kernel fast path allowed (socket mark MarkFastAllow) on a flow
			// nothing decided yet: decided like an allow from the queue.
			fast := fmt.Sprintf("-p tcp -m tcp --tcp-flags SYN,ACK,RST,FIN SYN -m mark --mark %#x/%#x", MarkFastAllow, MarkMask)
			// Only while the daemon lives (the lease, see 1).
			fmt.Fprintf(&b, "-A %s %s -m connmark --mark 0x0/%#x%s -j CONNMARK --set-xmark %#x/%#x\n", name, fast, MarkMask, lease, MarkAllow, MarkMask)
			fmt.Fprintf(&b, "-A %s %s %s%s -j RETURN\n", name, fast, ctAllow, lease)
		}
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp --tcp-flags SYN,ACK,RST,FIN SYN %s\n", name, q)
		if hook == "INPUT" {
			// A peer's SYN that conntrack calls INVALID (with FIN or RST,
			// which no handshake has; a SYN-ACK that answers no SYN it
			// saw, such as one to a local socket whose own SYN is held in
			// the queue): dropped. Linux's SYN_SENT state takes a SYN|FIN
			// as the peer's half of a simultaneous open and answers with a
			// SYN-ACK (which conntrack calls INVALID too, and LATCH-OUT
			// passes: no SYN without ACK), so the peer's ACK would
			// establish a connection whose own SYN latch still holds. The
			// rules above take bare SYNs and SYN-ACKs of known flows first.
			fmt.Fprintf(&b, "-A %s -p tcp -m tcp --tcp-flags SYN SYN -m conntrack --ctstate INVALID -j DROP\n", name)
		}
		fmt.Fprintf(&b, "-A %s -m connmark --mark %#x/%#x -m conntrack --ctdir ORIGINAL %s\n", name, MarkRedecide, MarkMask, q)
		if pinned != "" {
			// Not TCP: only from the socket the flow was allowed for, as
			// at 7, else held. Such a packet got here past the queue rule
			// for other sockets' above only if another CPU set its flow's
			// mark to MarkAllow since (a verdict's CONNMARK for the flow's
			// first packet, while another socket on the same port sends to
			// the same peer): it is not to leave undecided (review14).
			fmt.Fprintf(&b, "-A %s -p tcp %s -j RETURN\n", name, ctAllow)
			fmt.Fprintf(&b, "-A %s ! -p tcp %s%s -j RETURN\n", name, ctAllow, pinned)
			fmt.Fprintf(&b, "-A %s ! -p tcp %s %s\n", name, ctAllow, q)
			// Not TCP, from the side that opened the flow, with any of
			// latch's marks: held. No packet gets here without a change of
			// its flow's mark during this walk (the rules above queue or
			// return every such packet of a flow marked MarkAllow or
			// MarkRedecide), but two changes do it: MarkRedecide at 7's
			// queue, MarkAllow (a verdict) at 6 and the RETURN above, and
			// MarkRedecide again (a rule change) at the queue rule above;
			// the datagram would leave at the protocol's RETURN below,
			// meant for flows from before latch, while neither mark before
			// nor after lets it (review15). No rule sets a mark back to 0.
			fmt.Fprintf(&b, "-A %s ! -p tcp -m conntrack --ctdir ORIGINAL -m connmark ! --mark 0x0/%#x %s\n", name, MarkMask, q)
		} else {
			fmt.Fprintf(&b, "-A %s %s -j RETURN\n", name, ctAllow)
		}
		if out && spec.inbound {
			// What this host sends on a flow the peer opened (conntrack
			// direction reply, not an ICMP error: RELATED) that carries
			// one of latch's marks here: MarkRedecide, a rule change's
			// (allowed flows returned above; the socket pin's others were
			// queued). 6 queues only the side that opened the flow, and
			// such a packet left at the protocol's RETURN below from any
			// socket, undecided and unpinned, until the peer's next one
			// was decided, for ever if that was denied (review15). It is
			// held too, and decided as the inbound flow it belongs to for
			// the program of the socket that sent it (MarkRedecideReply
			// tells the reader so): an allow marks the flow MarkAllow and
			// pins it to that socket (2), as an allow of the peer's
			// datagram does; a deny drops it (a reset for TCP) and the
			// mark stays, so neither side's next packet passes undecided.
			// Not decided as this host's outbound connection: an outbound
			// allow of the program would mark the whole flow allowed, the
			// peer's side too, which the rules may now deny. The packet
			// mark is set and tested by the next rule alone (not again by
			// the flow's mark, which another CPU may change in between).
			// MarkAllow here (a verdict on another CPU since the rules
			// above) is held too: decided once more. Not over loopback
			// (held with Config.ExemptLoopback off): there the peer is a
			// local socket that opened the flow, whose own next packet 6
			// holds and decides as its outbound connection; decided here
			// as the other end's inbound one, an allow would mark the
			// whole flow allowed by the server's inbound rules, the
			// opener's side too, which its rules may now deny (review16).
			// Nor to one of this host's addresses out another interface
			// (review18): a program may send out any interface it names
			// (IP_UNICAST_IF, IP_PKTINFO, SO_BINDTODEVICE on an unbound
			// socket), and a route with an output interface takes a local
			// address that is not that interface's own out of it; the
			// opener is local all the same. The address type last: a
			// route lookup, only for a packet the rest matched.
			// MarkRedecide or MarkAllow only, as in LATCH-IN (review26).
			fmt.Fprintf(&b, "-A %s ! -o lo -m conntrack --ctstate ESTABLISHED --ctdir REPLY -m connmark --mark %#x/%#x -m addrtype ! --dst-type LOCAL -j MARK --set-xmark %#x/%#x\n", name, MarkAllow, MarkAllow|OwnMark, MarkRedecideReply, MarkMask)
			fmt.Fprintf(&b, "-A %s -m mark --mark %#x/%#x %s\n", name, MarkRedecideReply, MarkMask, q)
		} else if hook == "FORWARD" {
			// What the side that did not open a forwarded flow sends on
			// it (a container's answers to a host outside, or the outside
			// host's to a container) while the flow carries one of
			// latch's marks (MarkRedecide): held too, and decided as the
			// flow it belongs to, the same request its opener's next
			// packet makes (the reader reads the tuple reversed:
			// MarkRedecideReply tells it so). It passed undecided until
			// the opener's next packet was decided, and for ever once
			// that was denied (review16). The same two rules as in
			// LATCH-OUT. MarkRedecide or MarkAllow only, as in LATCH-IN
			// (review26): not a host's own bits a full-mask CONNMARK save
			// put there.
			fmt.Fprintf(&b, "-A %s -m conntrack --ctstate ESTABLISHED --ctdir REPLY -m connmark --mark %#x/%#x -j MARK --set-xmark %#x/%#x\n", name, MarkAllow, MarkAllow|OwnMark, MarkRedecideReply, MarkMask)
			fmt.Fprintf(&b, "-A %s -m mark --mark %#x/%#x %s\n", name, MarkRedecideReply, MarkMask, q)
		} else if hook == "INPUT" {
			// What the peer sends on a flow this host opened (conntrack
			// direction reply in LATCH-IN; LATCH-IN exists with
			// Config.Inbound only) while the flow carries one of latch's
			// marks (MarkRedecide, a rule change's; allowed flows returned
			// above): held too, and decided as the flow it belongs to,
			// the local program's outbound flow (the reader reads the
			// tuple reversed: MarkRedecideReply tells it so), for the
			// socket that receives it. It passed undecided until the
			// opener's next packet was decided, which a program that only
			// listens never sends: a peer pushed into a flow the rules
			// now deny for as long as it kept the entry alive (review16,
			// TestOutboundRedecidePeerPushes). An allow marks the flow
			// MarkAllow (and pins a UDP flow to that socket), so the
			// next packets of a stream the rules still allow pass unheld
			// at once; a deny drops it and the mark stays. Over loopback
			// too (held with Config.ExemptLoopback off): the opener is a
			// local socket, and its own rules decide, as for its own
			// packets (6). Only packets of flows with latch's marks get
			// here: the allowed flows' returned above. The same two
			// rules as in LATCH-FWD.
			// MarkRedecide or MarkAllow only (MarkAllow's bit set,
			// OwnMark's not: 0x10000000 under 0x50000000), not the
			// daemon's own flows (OwnMark, whose conntrack mark a host's
			// full-mask CONNMARK save sets) or a host's own bits
			// (review26, TestOwnFlowReplyMarkSaved).
			fmt.Fprintf(&b, "-A %s -m conntrack --ctstate ESTABLISHED --ctdir REPLY -m connmark --mark %#x/%#x -j MARK --set-xmark %#x/%#x\n", name, MarkAllow, MarkAllow|OwnMark, MarkRedecideReply, MarkMask)
			fmt.Fprintf(&b, "-A %s -m mark --mark %#x/%#x %s\n", name, MarkRedecideReply, MarkMask, q)
		}
		fwd := hook == "FORWARD"
		if out || fwd {
			fmt.Fprintf(&b, "-A %s -p tcp -m conntrack --ctstate NEW %s\n", name, q)
		}
		if fwd {
			// TCP conntrack cannot place (flags no handshake allows, such as a
			// bare FIN) never reaches a flow latch decided: dropped, so a
			// container's raw socket has no SYN-less channel out.
			fmt.Fprintf(&b, "-A %s -p tcp -m conntrack --ctstate INVALID -j DROP\n", name)
		}
		// UDP conntrack calls INVALID what it cannot parse (a raw socket's datagram
		// with a bad length field): held too, never passed.
		fmt.Fprintf(&b, "-A %s -p udp -m conntrack --ctstate NEW,INVALID,UNTRACKED %s\n", name, q)
		if spec.holdReplies(out) {
			// A datagram a local program sends on a flow the peer opened and nothing
			// decided (allowed flows returned above): the program starts the talk,
			// so it is held as its outbound connection.
			fmt.Fprintf(&b, "-A %s -p udp -m conntrack --ctdir REPLY %s\n", name, q)
		}
		// The rest of TCP and UDP (replies, flows from before latch) passes here, so
		// its packets do not walk the ICMP rules.
		for _, p := range []string{"tcp", "udp"} {
			fmt.Fprintf(&b, "-A %s -p %s -j RETURN\n", name, p)
		}
		// ICMP: every message is held but errors about a known flow, answers to a
		// query the peer sent, and the link's own bookkeeping (see icmpExceptions).
		// Not by conntrack state NEW: conntrack calls types it does not know INVALID
		// (extended echo) and neighbour discovery UNTRACKED, and a query that reuses a
		// stale entry is ESTABLISHED.
		fmt.Fprintf(&b, "-A %s -p %s -m conntrack --ctstate RELATED -j RETURN\n", name, icmpName)
		fmt.Fprintf(&b, "-A %s -p %s -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j RETURN\n", name, icmpName)
		for _, e := range icmpExceptions(v6) {
			if v6 {
				fmt.Fprintf(&b, "-A %s -p ipv6-icmp -m icmp6 --icmpv6-type %d -m hl --hl-eq %d -j RETURN\n", name, e.typ, e.hops)
			} else {
				fmt.Fprintf(&b, "-A %s -p igmp -m ttl --ttl-eq %d -j RETURN\n", name, e.hops)
			}
		}
		fmt.Fprintf(&b, "-A %s -p %s %s\n", name, icmpName, q)
		// Every other protocol (SCTP, UDP-Lite, GRE, ...) is held too: a new flow of a
		// protocol latch does not know is still a connection to decide, never a leak;
		// so is a packet conntrack cannot place (INVALID: an SCTP ABORT out of the
		// blue) or does not track.
		fmt.Fprintf(&b, "-A %s -m conntrack --ctstate NEW,INVALID,UNTRACKED %s\n", name, q)
		if spec.holdReplies(out) {
			// The replies of other connectionless protocols too (UDP-Lite, GRE, ESP,
			// ...); SCTP and DCCP, like TCP, answer a handshake the peer started.
			for _, p := range connectionOriented {
				fmt.Fprintf(&b, "-A %s -p %d -j RETURN\n", name, p)
			}
			fmt.Fprintf(&b, "-A %s -m conntrack --ctdir REPLY %s\n", name, q)
		}
		if out {
			for _, c := range created {
				fmt.Fprintf(&b, "-A %s -m comment --comment %s%s\n", name, createdMark, c)
			}
		}
	}
	declare(chainOut, "OUTPUT")
	if spec.dnsLogGroup != 0 {
		// A copy of every DNS query this host sends, first in the chain so that
		// queries on flows already allowed, over loopback and from the daemon are
		// seen too (a held query is copied again when its verdict repeats the chain):
		// an answer teaches a name only if it answers one of them.
		fmt.Fprintf(&b, "-A %s -p udp -m udp --dport 53 -m conntrack --ctdir ORIGINAL -j NFLOG --nflog-group %d\n", chainOut, spec.dnsLogGroup)
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp --dport 53 -m conntrack --ctdir ORIGINAL -j NFLOG --nflog-group %d\n", chainOut, spec.dnsLogGroup)
	}
	chain(chainOut, "OUTPUT", "-o", true)
	if spec.input() {
		declare(chainIn, "INPUT")
	}
	if spec.dnsLogGroup != 0 {
		// A copy of every DNS response, loopback included (a local resolver answers
		// there); NFLOG never holds the packet. Only replies on a flow this host opened
		// (conntrack REPLY direction); the reader then binds each to its query.
		fmt.Fprintf(&b, "-A %s -p udp -m udp --sport 53 -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j NFLOG --nflog-group %d\n", chainIn, spec.dnsLogGroup)
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp --sport 53 -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j NFLOG --nflog-group %d\n", chainIn, spec.dnsLogGroup)
	}
	if spec.inbound {
		chain(chainIn, "INPUT", "-i", false)
	}
	if spec.forward {
		declare(chainFwd, "FORWARD")
		chain(chainFwd, "FORWARD", "-i", false)
	}
	b.WriteString("COMMIT\n")
	if spec.notrack {
		spec.iptablesRaw(&b, jumped)
	}
	if spec.exemptLoopback {
		iptablesPost(&b, jumped, spec.notrack)
	}
	return b.String()
}

// iptablesPost writes the mangle table's part of the ruleset (with
// Config.ExemptLoopback): LATCH-POST, first in POSTROUTING, drops a packet of
// a flow the loopback return passed (MarkLoopbackExempt, or
// MarkLoopbackForged) that leaves by another interface than lo: rerouted by
// mark after LATCH-OUT saw lo (review24). -o is tested in the rule's header,
// the conntrack mark is one load.
//
// Then it drops an untracked packet (the host's NOTRACK of lo: no conntrack
// entry to carry the loopback mark) that leaves by another interface than
// lo to one of this host's addresses, without any of latch's bits in its
// packet mark (untrackedPost).
//
// With notrack (fastReturn) a rule before them returns an untracked packet
// with any of latch's bits in its packet mark: every packet of the fast path's
// TCP flows, which walked the three rules to no end (issue 9). The drop's
// connmark match fails without a conntrack entry, and untrackedPost's two
// rules want none of latch's bits: none of the three could take it.
func iptablesPost(b *strings.Builder, jumped map[string]bool, fastReturn bool) {
	b.WriteString("*mangle\n")
	fmt.Fprintf(b, ":%s - [0:0]\n", chainPost)
	if !jumped[chainPost] {
		fmt.Fprintf(b, "-I POSTROUTING 1 -j %s\n", chainPost)
	}
	if fastReturn {
		fmt.Fprintf(b, "-A %s -m conntrack --ctstate UNTRACKED -m mark ! --mark 0x0/%#x -j RETURN\n", chainPost, MarkMask)
	}
	fmt.Fprintf(b, "-A %s ! -o lo -m connmark --mark %#x/%#x -j DROP\n", chainPost, loopbackMarks, loopbackMarks)
	b.WriteString(untrackedPost(false))
	b.WriteString("COMMIT\n")
}

// untrackedPost is the rest of LATCH-POST (iptablesPost) and of table inet
// latch's postrouting chain (nft), after the loopback marks' drop. It closes the
// rest of review24: where the host keeps lo out of conntrack (raw OUTPUT
// `-o lo -j NOTRACK`, common advice), a
// loopback packet has no conntrack entry for LATCH-OUT to give
// MarkLoopbackExempt, and rerouted by the host's policy routing by mark out
// another interface it left undecided (TestLoopbackExemptRerouteUntrackedOut).
// Such a packet, in postrouting, is untracked, leaves by another interface
// than lo, carries none of latch's bits in its packet mark (an unprivileged
// socket has no mark; the host's full-mask MARK clears them), and its
// destination is one of this host's addresses (the sender picks it, and the
// local table routes such an address to lo; to another address the socket's
// route is another interface, which LATCH-OUT sees and decides by). Its
// source is not tested: a program may send from any address
// (IPV6_FREEBIND).
//
// The matches run in order of cost, the address type (a local table lookup
// for IPv4, a route lookup for IPv6) last, so that only an untracked packet
// without latch's bits out another interface pays it:
//
//   - a tracked packet (every packet of the ordinary path) stops at the
//     conntrack state, one test of the skb's conntrack pointer;
//   - the fast path's notrack TCP flows (untracked by their socket's mark,
//     MarkFastAllow, MarkFastFlow or MarkFastRedecide: see "Notrack") stop
//     at the packet mark, as the daemon's own (OwnMark) and an untracked
//     packet back from a verdict (MarkAllow: the queue decided it);
//   - what is left is the host's own untracked traffic out (its NOTRACK
//     rules for other interfaces), and the few ICMPv6 messages conntrack
//     never tracks (neighbour discovery, MLD), to multicast or a
//     neighbour: not local, they pass after the lookup.
//
// A fast socket's packet to a local address rerouted away passes: the fast
// path decided its connect to that address, as a verdict decides a tracked
// flow that keeps passing when rerouted (TestLoopbackRerouteDecided). What
// this drops beyond the hole: a host that NOTRACKs traffic and routes one
// of its own addresses out another interface by the socket's route (policy
// routing by uid or port ahead of the local table): LATCH-OUT saw that
// interface and decided the SYN, but the connection's later segments,
// unmarked, are dropped here. Tracked, that flow passes by its conntrack
// mark; untracked there is nothing to tell it by.
//
// Only what this host sends: postrouting sees forwarded packets too, and a
// router that keeps what it forwards out of conntrack (raw PREROUTING
// NOTRACK; IPVS does it by itself) may forward to an address that is local
// here as well (an LVS direct-routing director keeps the service address,
// local on the director, as the destination): that packet is none of the
// loopback exemption's and passes (review30, TestUntrackedPostForwardedToLocal).
// A packet this host sends has a socket or a local source (a program's
// FREEBIND source comes with its socket; an IPv6 anycast address counts as
// local here: it is delivered here, and an orphaned TCP socket's segments or
// the kernel's ICMPv6 errors from one have no socket, review31); a forwarded
// one has neither. The
// socket test (one pointer) before the source's address type, so that this
// host's own untracked traffic pays one lookup, as before: iptables returns
// a packet without a socket from a source that is not local, then drops;
// nft, which cannot test for no socket (meta skuid stops the rule), jumps to
// nftPostLocal for a packet to a local address and drops there one with a
// socket, then one from a local source. Left: a TCP socket's segments after
// its close (no socket then) from a FREEBIND source the host delivers here
// without it being local or anycast (a TPROXY-style local route, a VRF).
//
// It returns the rules' text: lines of iptables-restore for LATCH-POST, or
// of nft -f for table inet latch (nftPostLocal too).
func untrackedPost(nft bool) string {
	if nft {
		return fmt.Sprintf("add chain inet %[1]s %[3]s\n"+
			"add rule inet %[1]s %[2]s ct state untracked oifname != \"lo\" meta mark & %#[4]x == 0 fib daddr type local jump %[3]s\n"+
			"add rule inet %[1]s %[3]s meta skuid >= 0 drop\n"+
			"add rule inet %[1]s %[3]s fib saddr type { local, anycast } drop\n", nftTable, nftPost, nftPostLocal, MarkMask)
	}
	return fmt.Sprintf("-A %[1]s ! -o lo -m conntrack --ctstate UNTRACKED -m mark --mark 0x0/%#[2]x -m owner ! --socket-exists -m addrtype ! --src-type LOCAL,ANYCAST -j RETURN\n"+
		"-A %[1]s ! -o lo -m conntrack --ctstate UNTRACKED -m mark --mark 0x0/%#[2]x -m addrtype --dst-type LOCAL -j DROP\n", chainPost, MarkMask)
}

// fastMarks are the socket marks whose TCP packets notrack keeps out of
// conntrack (see "Notrack" in doc.go).
var fastMarks = []uint32{MarkFastAllow, MarkFastFlow, MarkFastRedecide}

// nftFastMarks is fastMarks as an nft anonymous set.
func nftFastMarks() string {
	return fmt.Sprintf("{ %#x, %#x, %#x }", MarkFastAllow, MarkFastFlow, MarkFastRedecide)
}

// Source routes (optionsRules). A socket may set a loose or strict source
// route (IPv4 IP_OPTIONS, IPv6 IPV6_RTHDR type 4: no privilege needed) at any
// time, even after its connect (IP_TOS then has the route looked up again):
// its packets' IP destination becomes the route's first hop F, not the address
// anything decided. Two rules at the top of LATCH-OUT (and of table inet
// latch's output chain), in every mode, reset such TCP packets:
//
//   - a packet with one of the fast path's marks (fastMarks): it would pass by
//     its mark (rule 4, notrack's returns), although the fast path decided the
//     connect's address (commit 7f06bbf for IPv4);
//   - a packet conntrack calls INVALID, whatever its mark: F is a new tuple,
//     on which a FIN|ACK segment (and, with nf_conntrack_tcp_loose=0, every
//     segment) is INVALID, which the INVALID RETURN (and the last TCP RETURN)
//     would pass: data of a queue-allowed connection would reach F. A NEW one
//     is held by the queue, which sees F.
//
// IPv4: xt_u32 reads the header length (IHL > 5: options), not the options
// themselves: any option is reset (no common program sets IPv4 options on TCP;
// others, as record route, do not change the destination). IPv6: xt_ipv6header
// finds a routing header. The reset comes from F's address, which the socket
// does not know: its connection times out (nothing reaches F either way).
// Without those matches (spec.noOptMatch; Start falls back to it when
// iptables-restore cannot load them) no fast mark passes anything (fastTCP and
// notrack are off) and every INVALID TCP packet is dropped instead: more than
// the reset would take (a stray segment conntrack cannot place, which the
// connection survives), never less.
// optMatch is the iptables match of a packet with IPv4 options (v6 false:
// xt_u32 reads the header length) or an IPv6 routing header (xt_ipv6header).
func optMatch(v6 bool) string {
	if v6 {
		return "-m ipv6header --header ipv6-route --soft"
	}
	return "-m u32 --u32 0>>24&0xF=6:15"
}

// nftOptMatches are optMatch's for nft, IPv4's and IPv6's.
var nftOptMatches = []string{"meta nfproto ipv4 ip hdrlength != 5", "meta nfproto ipv6 exthdr rt exists"}

func (spec ruleSpec) iptablesOptionsRules(name string, v6 bool) string {
	var b strings.Builder
	if spec.noOptMatch {
		fmt.Fprintf(&b, "-A %s -p tcp -m conntrack --ctstate INVALID -j DROP\n", name)
		return b.String()
	}
	match := optMatch(v6)
	if spec.fastTCP || spec.notrack {
		// The mark before the options: every TCP packet out walks these
		// rules, and the mark (a load) rules out two of them for a fast
		// socket's packet and all three for any other, where xt_u32 (a
		// program interpreted per packet) ran in each.
		for _, m := range fastMarks {
			fmt.Fprintf(&b, "-A %s -p tcp -m mark --mark %#x/%#x %s -j REJECT --reject-with tcp-reset\n", name, m, MarkMask, match)
		}
	}
	fmt.Fprintf(&b, "-A %s -p tcp -m conntrack --ctstate INVALID %s -j REJECT --reject-with tcp-reset\n", name, match)
	b.WriteString(spec.iptablesRouteRules(name, v6, false))
	return b.String()
}

// leaseMatch is the iptables match of the lease (spec.lease), with a leading
// space, "" without one: last in a rule, so that it runs only on a packet
// that matched everything else.
func (spec ruleSpec) leaseMatch() string {
	if spec.lease == "" {
		return ""
	}
	return " -m bpf --object-pinned " + spec.lease
}

// iptablesEarlyReturns are the first rules of LATCH-OUT (after the DNS log's
// copies): each returns, at once, packets that the rest of the chain would
// return too, with nothing done to them on the way, so that the packets of
// most flows walk 1 to 3 rules instead of 13 to 16 (issue 9). Each is the
// chain's own RETURN for such a packet (the fast path's untracked flow, the
// allowed flow's, the fast SYN's), and the rule stays in its place for the
// packets the early one does not take; the early one adds what makes every
// rule between the top and that RETURN unable to act on the packet:
//
//   - no source route (IPv4 options, IPv6 routing header): the negated
//     options match (noOptMatch), which only holds where the option rules'
//     own match (optMatch: its complement; xt_ipv6header's early exits
//     return false either way) would not reject or drop the packet;
//   - the loopback rules: the two CONNMARK rules want a conntrack entry
//     with no mark of latch's (NEW, or connmark 0): an untracked packet has
//     no entry (the conntrack and connmark matches fail without one), an
//     allowed flow's entry has MarkAllow; their RETURNs return, as the
//     early rule does; the MarkLoopbackForged DROP wants that conntrack
//     mark, which neither has;
//   - the INVALID reset: an untracked packet, or one with a conntrack
//     entry, is not INVALID (no entry and not untracked);
//   - the route drop: it takes no IPv4 TCP (protocols but 6) and no IPv6
//     TCP (! -p tcp), and wants the options anyway.
//
// Between the top and those RETURNs there is no other rule. The DNS log's
// NFLOG rules stay before them (they copy, whatever comes after). Not without
// the option matches (spec.noOptMatch: nothing to negate; no fast marks then
// either).
func (spec ruleSpec) iptablesEarlyReturns(name string, v6 bool, lease string) string {
	if spec.noOptMatch {
		return ""
	}
	var b strings.Builder
	noOpt := noOptMatch(v6)
	if spec.notrack {
		// The fast path's untracked connection but its SYNs (notrack's
		// MarkFastFlow RETURN): most packets out with notrack.
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp ! --tcp-flags SYN,ACK,RST,FIN SYN -m conntrack --ctstate UNTRACKED -m mark --mark %#x/%#x %s -j RETURN\n", name, MarkFastFlow, MarkMask, noOpt)
	}
	// An allowed flow's TCP packet but a SYN, not marked for a reset (the
	// conntrack mark MarkAllow RETURN after the fast path's rules): every
	// packet of a queue-allowed connection. The rules it skips besides the
	// above: the fast path's RETURNs and OwnMark's, which return too.
	fmt.Fprintf(&b, "-A %s -p tcp -m tcp ! --tcp-flags SYN,ACK,RST,FIN SYN -m connmark --mark %#x/%#x -m mark ! --mark %#x/%#x %s -j RETURN\n", name, MarkAllow, MarkMask, MarkReject, MarkMask, noOpt)
	if spec.notrack {
		// The fast path's SYN (notrack's MarkFastAllow RETURN, with its
		// lease: read here first, and again there if it did not match).
		fmt.Fprintf(&b, "-A %s -p tcp -m conntrack --ctstate UNTRACKED -m mark --mark %#x/%#x %s%s -j RETURN\n", name, MarkFastAllow, MarkMask, noOpt, lease)
	}
	return b.String()
}

// nftNoOptMatches are nftOptMatches negated, IPv4's and IPv6's: an IPv4
// packet without options, an IPv6 packet without a routing header (exthdr
// missing is exists' complement: the lookup's error reads as missing for
// both).
var nftNoOptMatches = []string{"meta nfproto ipv4 ip hdrlength 5", "meta nfproto ipv6 exthdr rt missing"}

// nftEarlyReturns are iptablesEarlyReturns for table inet latch's output
// chain, first in it (after the DNS log's chain, another), each once per
// family (nftNoOptMatches). They accept what the chain's own accepts further
// down would: the fast path's untracked flow but its SYNs, an allowed flow's
// TCP packets but SYNs and resets' (its ct mark accept), the fast SYN by its
// lease (the jump to fastlease: a match accepts there, fastpass's untracked
// accept; no match returns, and the packet walks the chain as before, to the
// same jump). What they skip cannot act on such a packet: the loopback
// rules want a new flow or ct mark 0 (an untracked packet has no ct mark: a
// ct mark or status expression stops the rule) or accept; the forged drop
// wants MarkLoopbackForged; the source-route rules want options or a routing
// header, and the route drops take no TCP; the INVALID reset wants INVALID;
// the fast path's accepts and OwnMark's accept.
func (spec ruleSpec) nftEarlyReturns() []string {
	var cases []string
	if spec.notrack {
		cases = append(cases, fmt.Sprintf("tcp flags & (fin|syn|rst|ack) != syn ct state untracked meta mark & %#x == %#x accept", MarkMask, MarkFastFlow))
	}
	cases = append(cases, fmt.Sprintf("tcp flags & (fin|syn|rst|ack) != syn ct mark & %#x == %#x meta mark & %#x != %#x accept", MarkMask, MarkAllow, MarkMask, MarkReject))
	if spec.notrack && spec.lease != "" && spec.fastTCP {
		cases = append(cases, fmt.Sprintf("meta l4proto tcp ct state untracked meta mark & %#x == %#x jump %s", MarkMask, MarkFastAllow, nftFastLease))
	} else if spec.notrack {
		cases = append(cases, fmt.Sprintf("meta l4proto tcp ct state untracked meta mark & %#x == %#x accept", MarkMask, MarkFastAllow))
	}
	// Each case for IPv4, then for IPv6: the commonest first for both.
	var rules []string
	for _, c := range cases {
		for _, noOpt := range nftNoOptMatches {
			rules = append(rules, noOpt+" "+c)
		}
	}
	return rules
}

// iptablesEarlyReturnsIn are iptablesEarlyReturns for LATCH-IN (after the DNS
// log's copies; Config.Inbound): the peer's packets of the fast path's
// untracked flows, marked MarkFastFlow or MarkFastAllow by LATCH-RAW-SK from
// their socket's mark, but a SYN without ACK (the peer's half of a
// simultaneous open, which LATCH-IN queues: the flags test is that rule's
// negated), and an allowed flow's TCP packets but SYNs, not marked
// MarkReject. LATCH-IN's own RETURNs of them stay where they are. What they
// skip: the loopback return (returns too), the drops of MarkLoopbackForged
// and MarkLoopbackExempt flows (a conntrack mark: none without an entry,
// MarkAllow with one), the simultaneous open's queue rule (a SYN without
// ACK), the fast marks' RETURNs (return too). LATCH-IN has no source-route
// rules.
func (spec ruleSpec) iptablesEarlyReturnsIn(name string) string {
	var b strings.Builder
	if spec.notrack {
		for _, m := range []uint32{MarkFastFlow, MarkFastAllow} {
			fmt.Fprintf(&b, "-A %s -p tcp -m tcp ! --tcp-flags SYN,ACK SYN -m conntrack --ctstate UNTRACKED -m mark --mark %#x/%#x -j RETURN\n", name, m, MarkMask)
		}
	}
	fmt.Fprintf(&b, "-A %s -p tcp -m tcp ! --tcp-flags SYN,ACK,RST,FIN SYN -m connmark --mark %#x/%#x -m mark ! --mark %#x/%#x -j RETURN\n", name, MarkAllow, MarkMask, MarkReject, MarkMask)
	return b.String()
}

// nftEarlyReturnsIn are iptablesEarlyReturnsIn for table inet latch's input
// chain: the fast path's untracked packets by their socket's mark (any of
// the three, as the chain's own accept, which also wants no MarkReject), but
// a SYN without ACK, and an allowed flow's.
func (spec ruleSpec) nftEarlyReturnsIn() []string {
	var rules []string
	if spec.notrack {
		rules = append(rules, fmt.Sprintf("tcp flags & (syn|ack) != syn ct state untracked socket mark & %#x %s meta mark & %#x != %#x accept", MarkMask, nftFastMarks(), MarkMask, MarkReject))
	}
	return append(rules, fmt.Sprintf("tcp flags & (fin|syn|rst|ack) != syn ct mark & %#x == %#x meta mark & %#x != %#x accept", MarkMask, MarkAllow, MarkMask, MarkReject))
}

// noOptMatch is optMatch negated: a packet without IPv4 options (v6 false) or
// without an IPv6 routing header. Where it matches, optMatch does not.
func noOptMatch(v6 bool) string {
	if v6 {
		return "-m ipv6header ! --header ipv6-route --soft"
	}
	return "-m u32 ! --u32 0>>24&0xF=6:15"
}

// iptablesRouteRules drop a packet of another protocol than TCP with IPv4
// options (but IGMP's and RSVP's, whose router alert the kernel itself adds) or
// an IPv6 routing header, in LATCH-OUT and LATCH-FWD before the rules that pass
// an allowed flow: a datagram (or an echo) with a source route via an allowed
// host F is, in its header, one more of the allowed flow to F, and F sends it
// on to a host nobody decided (review6). In LATCH-FWD (fwd) TCP too: a
// container's raw socket (CAP_NET_RAW, Docker's default) writes a segment of
// its allowed connection to F, with its ports and in its window, and a source
// route via F to X, which the allowed flow's RETURN passed (review7; this
// host's own TCP cannot: its source-routed segments have a tuple of their own,
// which the queue or the resets of iptablesOptionsRules see). The queue
// refuses a new flow's first packet with a source route itself
// (packet.Packet.SourceRoute). Not without xt_u32 and xt_ipv6header
// (spec.noOptMatch).
func (spec ruleSpec) iptablesRouteRules(name string, v6, fwd bool) string {
	if spec.noOptMatch {
		return ""
	}
	if v6 {
		if fwd {
			return fmt.Sprintf("-A %s %s -j DROP\n", name, optMatch(true))
		}
		return fmt.Sprintf("-A %s ! -p tcp %s -j DROP\n", name, optMatch(true))
	}
	// The protocol (byte 9): all but IGMP (2), RSVP (46) and, but in
	// LATCH-FWD, TCP (6).
	protos := "0:1,3:5,7:45,47:255"
	if fwd {
		protos = "0:1,3:45,47:255"
	}
	return fmt.Sprintf("-A %s %s&&8>>16&0xFF=%s -j DROP\n", name, optMatch(false), protos)
}

// nftRouteRules are iptablesRouteRules for table inet latch's output chain
// and (fwd) its forward chain.
func nftRouteRules(fwd bool) []string {
	if fwd {
		return []string{
			nftOptMatches[0] + " meta l4proto != { 2, 46 } drop",
			nftOptMatches[1] + " drop",
		}
	}
	return []string{
		nftOptMatches[0] + " meta l4proto != { 2, 6, 46 } drop",
		nftOptMatches[1] + " meta l4proto != tcp drop",
	}
}

// nftOptionsRules are iptablesOptionsRules for table inet latch's output
// chain (nft reads the header length and routing header itself: no fallback).
func (spec ruleSpec) nftOptionsRules() []string {
	var rules []string
	for _, opt := range nftOptMatches {
		if spec.fastTCP || spec.notrack {
			rules = append(rules, fmt.Sprintf("%s meta l4proto tcp meta mark & %#x %s reject with tcp reset", opt, MarkMask, nftFastMarks()))
		}
		rules = append(rules, fmt.Sprintf("%s meta l4proto tcp ct state invalid reject with tcp reset", opt))
	}
	return append(rules, nftRouteRules(false)...)
}

// iptablesRaw writes the raw table's part of the ruleset (see "Notrack" in
// doc.go): the fast path's TCP packets are not tracked.
func (spec ruleSpec) iptablesRaw(b *strings.Builder, jumped map[string]bool) {
	b.WriteString("*raw\n")
	for _, c := range []struct{ name, hook string }{{chainRawOut, "OUTPUT"}, {chainRawPre, "PREROUTING"}, {chainRawSk, ""}} {
		fmt.Fprintf(b, ":%s - [0:0]\n", c.name)
		if c.hook != "" && !jumped[c.name] {
			fmt.Fprintf(b, "-I %s 1 -j %s\n", c.hook, c.name)
		}
	}
	// DNS over TCP stays tracked: the DNS log's rules follow conntrack's
	// direction. The port is tested in each rule, after the mark (a rule of its
	// own before them would cost every packet one rule more).
	dport, sport := "", ""
	if spec.dnsLogGroup != 0 {
		dport, sport = " -m tcp ! --dport 53", " -m tcp ! --sport 53"
	}
	// This host's packets carry their socket's mark.
	for _, m := range fastMarks {
		fmt.Fprintf(b, "-A %s -p tcp -m mark --mark %#x/%#x%s -j CT --notrack\n", chainRawOut, m, MarkMask, dport)
	}
	// The peer's: --restore-skmark sets the packet's whole mark to its local
	// socket's (xt_socket: skb->mark = sk->sk_mark), so only a packet that
	// carries no mark yet is looked at (one another program marked stays as it
	// is, and tracked), and LATCH-RAW-SK puts it back to 0 unless the socket is
	// a fast one, which leaves just latch's mark. Only a packet addressed to
	// this host: xt_socket's lookup finds a listener on the wildcard address
	// (--nowildcard lets it) for a forwarded packet to any host's port, which
	// has no local socket; untracked by that listener's fast mark, a
	// container's SYN-less segments would pass LATCH-FWD (no conntrack state
	// to hold them by). The mark after the socket match (which has restored
	// the socket's by then): a socket without a mark (most) leaves the packet
	// with 0, which LATCH-RAW-SK would only set again, so it does not jump
	// there (issue 9: 8 rules fewer per packet of an ordinary connection).
	fmt.Fprintf(b, "-A %s -p tcp -m mark --mark 0x0%s -m addrtype --dst-type LOCAL -m socket --nowildcard --restore-skmark -m mark ! --mark 0x0 -j %s\n", chainRawPre, sport, chainRawSk)
	// LATCH-RAW-SK: a packet whose socket's mark is none of the fast ones
	// gets 0 back and returns; a fast one's is not tracked and keeps
	// latch's bits alone (MARK --and-mark MarkMask: the fast mark itself).
	// Four rules for a fast socket's packet, two for another (issue 9; it
	// was a rule pair per fast mark and a reset, seven for every packet).
	fmt.Fprintf(b, "-A %s", chainRawSk)
	for _, m := range fastMarks {
		fmt.Fprintf(b, " -m mark ! --mark %#x/%#x", m, MarkMask)
	}
	fmt.Fprintf(b, " -j MARK --set-xmark 0x0/0xffffffff\n")
	fmt.Fprintf(b, "-A %s -m mark --mark 0x0 -j RETURN\n", chainRawSk)
	fmt.Fprintf(b, "-A %s -j CT --notrack\n", chainRawSk)
	fmt.Fprintf(b, "-A %s -j MARK --and-mark %#x\n", chainRawSk, MarkMask)
	b.WriteString("COMMIT\n")
}

func (fw *iptablesFirewall) install(spec ruleSpec) error {
	for i, v6 := range []bool{false, true} {
		cmd := fw.save[i]
		var created []string
		// A ruleset a stopped daemon left behind is adopted: its record of what was
		// created for it carries over, and its jumps stay.
		if old, err := run("", cmd, "-w", "-t", "filter", "-S", chainOut); err == nil {
			created = createdMarks(old)
		}
		if fw.kind == FirewallIptablesNft {
			missing := nftMissing(fw.nftFam[i], spec.input(), spec.forward)
			if spec.notrack {
				missing = append(missing, nftRawMissing(fw.nftFam[i])...)
			}
			if spec.exemptLoopback {
				missing = append(missing, nftManglePostMissing(fw.nftFam[i])...)
			}
			for _, c := range missing {
				if !slices.Contains(created, c) {
					created = append(created, c)
				}
			}
		}
		jumped := map[string]bool{}
		for _, c := range []struct{ chain, hook string }{{chainOut, "OUTPUT"}, {chainIn, "INPUT"}, {chainFwd, "FORWARD"}} {
			if _, err := run("", cmd, "-w", "-t", "filter", "-C", c.hook, "-j", c.chain); err == nil {
				jumped[c.chain] = true
			}
		}
		if spec.notrack {
			for _, c := range []struct{ chain, hook string }{{chainRawOut, "OUTPUT"}, {chainRawPre, "PREROUTING"}} {
				if _, err := run("", cmd, "-w", "-t", "raw", "-C", c.hook, "-j", c.chain); err == nil {
					jumped[c.chain] = true
				}
			}
		}
		if spec.exemptLoopback {
			if _, err := run("", cmd, "-w", "-t", "mangle", "-C", "POSTROUTING", "-j", chainPost); err == nil {
				jumped[chainPost] = true
			}
		}
		if _, err := run(spec.iptablesRules(v6, created, jumped), fw.restore[i], "-w", "--noflush"); err != nil {
			fw.remove() // roll back whatever got in
			if spec.notrack {
				return fmt.Errorf("%w: install %s ruleset: %w", errNotrack, fw.kind, err)
			}
			return fmt.Errorf("install %s ruleset: %w", fw.kind, err)
		}
		if !spec.notrack {
			if err := fw.removeRaw(i); err != nil {
				return fmt.Errorf("remove the raw table chains of an earlier ruleset: %w", err)
			}
		}
		if !spec.exemptLoopback {
			if err := fw.removePost(i); err != nil {
				return fmt.Errorf("remove the postrouting chain of an earlier ruleset: %w", err)
			}
			if fw.kind == FirewallIptablesNft {
				nftTidyManglePost(fw.nftFam[i], created)
			}
		}
		if !spec.input() {
			if _, err := removeChain(cmd, chainIn, "INPUT"); err != nil {
				return fmt.Errorf("remove the inbound chain of an earlier ruleset: %w", err)
			}
		}
		if !spec.forward {
			if _, err := removeChain(cmd, chainFwd, "FORWARD"); err != nil {
				return fmt.Errorf("remove the forward chain of an earlier ruleset: %w", err)
			}
		}
	}
	return nil
}

func createdMarks(ruleset string) []string {
	var created []string
	for _, m := range createdMarkRE.FindAllStringSubmatch(ruleset, -1) {
		if !slices.Contains(created, m[1]) {
			created = append(created, m[1])
		}
	}
	return created
}

var createdMarkRE = regexp.MustCompile(createdMark + `([a-zA-Z-]+)`)

// nftMissing lists the nftables objects of table "fam filter" that do not exist yet.
func nftMissing(fam string, inbound, forward bool) []string {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil // cannot tell, so nothing will be deleted
	}
	if _, err := run("", "nft", "list", "table", fam, "filter"); err != nil {
		return []string{"table"}
	}
	var missing []string
	hooks := []string{"OUTPUT"}
	if inbound {
		hooks = append(hooks, "INPUT")
	}
	if forward {
		hooks = append(hooks, "FORWARD")
	}
	for _, h := range hooks {
		if _, err := run("", "nft", "list", "chain", fam, "filter", h); err != nil {
			missing = append(missing, "chain-"+h)
		}
	}
	return missing
}

func (fw *iptablesFirewall) remove() error { return fw.removeLeftover() }

// chainOptProbe is the chain optMatches adds to find out whether xt_u32 and
// xt_ipv6header load: nothing jumps to it, and it goes at once.
const chainOptProbe = "LATCH-OPT-PROBE"

func (fw *iptablesFirewall) optMatches() error {
	var errs []error
	for i, v6 := range []bool{false, true} {
		in := fmt.Sprintf("*filter\n:%s - [0:0]\n-A %s -p tcp %s -j RETURN\nCOMMIT\n", chainOptProbe, chainOptProbe, optMatch(v6))
		_, err := run(in, fw.restore[i], "-w", "--noflush")
		run("", fw.save[i], "-w", "-t", "filter", "-F", chainOptProbe)
		run("", fw.save[i], "-w", "-t", "filter", "-X", chainOptProbe)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (fw *iptablesFirewall) removeLeftover() error {
	var errs []error
	for i := range fw.save {
		if err := fw.removeFamily(i); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeFamily removes the jumps to and the chains LATCH-OUT and LATCH-IN of family i,
// one step at a time so that a half-present ruleset (a crash mid-install) goes too,
// then the nftables objects created for them.
func (fw *iptablesFirewall) removeFamily(i int) error {
	var errs []error
	var created []string
	for _, c := range []struct{ chain, hook string }{{chainOut, "OUTPUT"}, {chainIn, "INPUT"}, {chainFwd, "FORWARD"}} {
		marks, err := removeChain(fw.save[i], c.chain, c.hook)
		created = append(created, marks...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := fw.removeRaw(i); err != nil {
		errs = append(errs, err)
	}
	if err := fw.removePost(i); err != nil {
		errs = append(errs, err)
	}
	if fw.kind == FirewallIptablesNft && len(created) > 0 {
		nftTidy(fw.nftFam[i], created)
		nftTidyRaw(fw.nftFam[i], created)
		nftTidyManglePost(fw.nftFam[i], created)
	}
	return errors.Join(errs...)
}

// removeRaw removes the raw table's chains of notrack (and the jumps to them) of
// family i. With iptables-legacy it looks only if the raw table exists: listing
// it would create it.
func (fw *iptablesFirewall) removeRaw(i int) error {
	if fw.kind == FirewallIptablesLegacy && !legacyTablePresent(i == 1, "raw") {
		return nil
	}
	var errs []error
	for _, c := range []struct{ chain, hook string }{{chainRawOut, "OUTPUT"}, {chainRawPre, "PREROUTING"}, {chainRawSk, ""}} {
		if _, err := removeTableChain(fw.save[i], "raw", c.chain, c.hook); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removePost removes LATCH-POST (and the jump to it) of family i. With
// iptables-legacy it looks only if the mangle table exists: listing it would
// create it.
func (fw *iptablesFirewall) removePost(i int) error {
	if fw.kind == FirewallIptablesLegacy && !legacyTablePresent(i == 1, "mangle") {
		return nil
	}
	_, err := removeTableChain(fw.save[i], "mangle", chainPost, "POSTROUTING")
	return err
}

// legacyTablePresent reports whether the iptables-legacy table exists for IPv4
// (or v6), without creating it.
func legacyTablePresent(v6 bool, table string) bool {
	f := "/proc/net/ip_tables_names"
	if v6 {
		f = "/proc/net/ip6_tables_names"
	}
	b, err := os.ReadFile(f)
	return err == nil && slices.Contains(strings.Fields(string(b)), table)
}

// removeChain removes chain and every jump to it from hook, and returns the created
// marks it carried. A missing chain is no error.
func removeChain(cmd, chain, hook string) ([]string, error) {
	return removeTableChain(cmd, "filter", chain, hook)
}

// removeTableChain is removeChain in table; hook "": no jump to remove.
func removeTableChain(cmd, table, chain, hook string) ([]string, error) {
	out, err := run("", cmd, "-w", "-t", table, "-S", chain)
	if err != nil {
		return nil, nil // no such chain
	}
	for range 100 { // bounded: someone may have added the jump more than once
		if hook == "" {
			break
		}
		if _, err := run("", cmd, "-w", "-t", table, "-D", hook, "-j", chain); err != nil {
			break
		}
	}
	if _, err := run("", cmd, "-w", "-t", table, "-F", chain); err != nil {
		return createdMarks(out), err
	}
	if _, err := run("", cmd, "-w", "-t", table, "-X", chain); err != nil {
		return createdMarks(out), err
	}
	return createdMarks(out), nil
}

// nftRawMissing lists the nftables objects of table "fam raw" that notrack's
// chains need and that do not exist yet, as created marks ("raw-table",
// "raw-chain-HOOK").
func nftRawMissing(fam string) []string {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil
	}
	if _, err := run("", "nft", "list", "table", fam, "raw"); err != nil {
		return []string{"raw-table"}
	}
	var missing []string
	for _, h := range []string{"OUTPUT", "PREROUTING"} {
		if _, err := run("", "nft", "list", "chain", fam, "raw", h); err != nil {
			missing = append(missing, "raw-chain-"+h)
		}
	}
	return missing
}

// nftTidyRaw is nftTidy for the raw table's objects iptables-nft created for
// notrack.
func nftTidyRaw(fam string, created []string) {
	for _, c := range created {
		if hook, ok := strings.CutPrefix(c, "raw-chain-"); ok {
			nftTidyChain(fam, "raw", hook)
		}
	}
	if !slices.Contains(created, "raw-table") {
		return
	}
	for _, h := range []string{"PREROUTING", "OUTPUT"} {
		nftTidyChain(fam, "raw", h)
	}
	out, err := run("", "nft", "list", "table", fam, "raw")
	if err == nil && !strings.Contains(out, "chain ") && !strings.Contains(out, "set ") && !strings.Contains(out, "map ") {
		run("", "nft", "delete", "table", fam, "raw")
	}
}

// nftTidyChain deletes the base chain hook of table "fam table" if it has no
// rule and its policy is not drop: "nft delete chain" deletes a chain with its
// rules (checked on 6.18), and the chain may have got someone else's since
// iptables-nft created it for latch.
func nftTidyChain(fam, table, hook string) {
	out, err := run("", "nft", "list", "chain", fam, table, hook)
	if err != nil || strings.Contains(out, "policy drop") {
		return
	}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		// Newer nft prints a comment line ("# Warning: table ip filter is
		// managed by iptables-nft, do not touch!"): not a rule (review25).
		if l != "" && l != "}" && !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "table ") && !strings.HasPrefix(l, "chain ") && !strings.HasPrefix(l, "type ") {
			return // a rule
		}
	}
	run("", "nft", "delete", "chain", fam, table, hook)
}

// nftManglePostMissing lists the nftables objects of table "fam mangle" that
// LATCH-POST needs and that do not exist yet, as created marks
// ("mangle-table", "mangle-chain-POSTROUTING").
func nftManglePostMissing(fam string) []string {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil
	}
	if _, err := run("", "nft", "list", "table", fam, "mangle"); err != nil {
		return []string{"mangle-table"}
	}
	if _, err := run("", "nft", "list", "chain", fam, "mangle", "POSTROUTING"); err != nil {
		return []string{"mangle-chain-POSTROUTING"}
	}
	return nil
}

// nftTidyManglePost is nftTidy for the mangle table's objects iptables-nft
// created for LATCH-POST.
func nftTidyManglePost(fam string, created []string) {
	if !slices.Contains(created, "mangle-table") && !slices.Contains(created, "mangle-chain-POSTROUTING") {
		return
	}
	nftTidyChain(fam, "mangle", "POSTROUTING")
	if !slices.Contains(created, "mangle-table") {
		return
	}
	out, err := run("", "nft", "list", "table", fam, "mangle")
	if err == nil && !strings.Contains(out, "chain ") && !strings.Contains(out, "set ") && !strings.Contains(out, "map ") {
		run("", "nft", "delete", "table", fam, "mangle")
	}
}

// nftTidy deletes the objects iptables-nft created for latch, if they are empty
// (nftTidyChain: a chain with rules stays), and the table only when no chain is
// left in it.
func nftTidy(fam string, created []string) {
	for _, c := range created {
		if hook, ok := strings.CutPrefix(c, "chain-"); ok {
			nftTidyChain(fam, "filter", hook)
		}
	}
	for _, c := range created {
		if c != "table" {
			continue
		}
		for _, h := range []string{"INPUT", "FORWARD", "OUTPUT"} {
			nftTidyChain(fam, "filter", h)
		}
		out, err := run("", "nft", "list", "table", fam, "filter")
		if err == nil && !strings.Contains(out, "chain ") && !strings.Contains(out, "set ") && !strings.Contains(out, "map ") {
			run("", "nft", "delete", "table", fam, "filter")
		}
	}
}

var queueNumRE = regexp.MustCompile(`--queue-num (\d+)`)

func (fw *iptablesFirewall) leftover() (bool, []uint16, error) {
	exists := false
	var queues []uint16
	for i, cmd := range fw.save {
		for _, chain := range []string{chainOut, chainIn, chainFwd} {
			out, err := run("", cmd, "-w", "-t", "filter", "-S", chain)
			if err != nil {
				continue
			}
			exists = true
			queues = appendQueues(queues, out)
		}
		// LATCH-POST alone (a crash while removing): no queue, but left
		// for Cleanup to remove. Not listed where legacy has no mangle
		// table (listing creates it).
		if fw.kind == FirewallIptablesLegacy && !legacyTablePresent(i == 1, "mangle") {
			continue
		}
		if _, err := run("", cmd, "-w", "-t", "mangle", "-S", chainPost); err == nil {
			exists = true
		}
	}
	return exists, queues, nil
}

func appendQueues(queues []uint16, ruleset string) []uint16 {
	for _, m := range queueNumRE.FindAllStringSubmatch(ruleset, -1) {
		n, err := strconv.ParseUint(m[1], 10, 16)
		if err == nil && !containsQueue(queues, uint16(n)) {
			queues = append(queues, uint16(n))
		}
	}
	return queues
}

func containsQueue(qs []uint16, q uint16) bool {
	for _, x := range qs {
		if x == q {
			return true
		}
	}
	return false
}

// ---- native nftables ----

type nftFirewall struct{ installed bool }

func (fw *nftFirewall) name() string { return FirewallNftables }

func (spec ruleSpec) nftRules() string {
	var b strings.Builder
	q := fmt.Sprintf("queue num %d", spec.queue)
	if spec.failOpen {
		q += " bypass"
	}
	fmt.Fprintf(&b, "add table inet %s\n", nftTable)
	lease := spec.lease != "" && spec.fastTCP
	udpLease := spec.lease != "" && spec.fastUDP != ""
	if udpLease {
		// The UDP match only while the daemon lives: udplease gets the
		// lease match over netlink, with a goto to udpfast.
		fmt.Fprintf(&b, "add chain inet %s %s\n", nftTable, nftUDPLease)
	}
	if lease {
		// A SYN that would pass by its socket's MarkFastAllow, only while
		// the daemon lives (see iptablesRules): fastlease gets the lease
		// match over netlink (addNftBPFMatch), with a goto to fastpass.
		fmt.Fprintf(&b, "add chain inet %s %s\n", nftTable, nftFastLease)
		fmt.Fprintf(&b, "add chain inet %s %s\n", nftTable, nftFastPass)
		fmt.Fprintf(&b, "add rule inet %s %s ct state untracked accept\n", nftTable, nftFastPass)
		fmt.Fprintf(&b, "add rule inet %s %s ct mark & %#x == 0 ct mark set ct mark & %#x | %#x accept\n", nftTable, nftFastPass, MarkMask, ^MarkMask, MarkAllow)
		fmt.Fprintf(&b, "add rule inet %s %s ct mark & %#x == %#x accept\n", nftTable, nftFastPass, MarkMask, MarkAllow)
	}
	if spec.stash != "" {
		for _, c := range []string{nftSendStash, nftSendStashDone} {
			fmt.Fprintf(&b, "add chain inet %s %s\n", nftTable, c)
		}
	}
	if spec.sockPin != "" {
		for _, c := range []string{nftSockPin, nftSockPinPass, nftSockPinRec, nftSockPinRecDone} {
			fmt.Fprintf(&b, "add chain inet %s %s\n", nftTable, c)
		}
		fmt.Fprintf(&b, "add rule inet %s %s accept\n", nftTable, nftSockPinPass)
	}
	if spec.fastUDP != "" {
		// Decided as an allow from the queue is (the rule after "own mark").
		fmt.Fprintf(&b, "add chain inet %s %s\n", nftTable, nftUDPFast)
		fmt.Fprintf(&b, "add chain inet %s %s\n", nftTable, nftUDPFastAllow)
		if spec.sockPin != "" {
			// The socket pin records the datagram's socket first (see
			// iptablesRules: there the allow rule after the match does).
			fmt.Fprintf(&b, "add rule inet %s %s meta mark set meta mark & %#x | %#x ct mark set ct mark & %#x | %#x\n",
				nftTable, nftUDPFastAllow, ^MarkMask, MarkAllow, ^MarkMask, MarkAllow)
			fmt.Fprintf(&b, "add rule inet %s %s jump %s\n", nftTable, nftUDPFastAllow, nftSockPinRec)
			fmt.Fprintf(&b, "add rule inet %s %s accept\n", nftTable, nftUDPFastAllow)
		} else {
			fmt.Fprintf(&b, "add rule inet %s %s meta mark set meta mark & %#x | %#x ct mark set ct mark & %#x | %#x accept\n",
				nftTable, nftUDPFastAllow, ^MarkMask, MarkAllow, ^MarkMask, MarkAllow)
		}
	}
	chain := func(name, hook, lo string, out bool) {
		// Priority filter - 1: before iptables-nft's filter chains, like the first
		// position in OUTPUT. Accept here ends only this chain; later base chains
		// still see the packet.
		fmt.Fprintf(&b, "add chain inet %s %s { type filter hook %s priority filter - 1; policy accept; }\n", nftTable, name, hook)
		r := func(format string, args ...any) {
			fmt.Fprintf(&b, "add rule inet %s %s ", nftTable, name)
			fmt.Fprintf(&b, format, args...)
			b.WriteByte('\n')
		}
		fwd := hook == "forward"
		if out {
			// Returns at once what the chain would accept (see
			// nftEarlyReturns).
			for _, rule := range spec.nftEarlyReturns() {
				r("%s", rule)
			}
		} else if hook == "input" {
			for _, rule := range spec.nftEarlyReturnsIn() {
				r("%s", rule)
			}
		}
		// stashed runs the sender stash on every UDP datagram that gets
		// this far, once, before the first rule that may queue one (see
		// iptablesRules): output only.
		stashed := func() {
			if out && spec.stash != "" {
				r("meta l4proto udp jump %s", nftSendStash)
			}
		}
		if spec.exemptLoopback && out {
			// A flow born on lo from a source that is not local (see
			// iptablesRules).
			r(`%s "lo" ct state new ct mark & %#x == 0 fib saddr type != local ct mark set ct mark & %#x | %#x`, lo, MarkMask, ^MarkMask, MarkLoopbackForged)
		}
		if spec.exemptLoopback && out {
			// To an address of this host only, as after DNAT (see
			// iptablesRules); a new flow they pass gets
			// MarkLoopbackExempt first, for the postrouting chain
			// (review24).
			// Any packet of an unmarked flow (see iptablesRules, review25).
			// From a local address to a local (or this host's anycast,
			// by lo) one only (review27).
			r(`%s "lo" ct mark & %#x == 0 fib saddr type local fib daddr type { local, anycast } ct mark set ct mark & %#x | %#x`, lo, MarkMask, ^MarkMask, MarkLoopbackExempt)
			r(`%s "lo" ct status & dnat == 0 accept`, lo)
			r(`%s "lo" fib daddr type local accept`, lo)
		} else if spec.exemptLoopback {
			r(`%s "lo" accept`, lo)
		}
		if spec.exemptLoopback && !fwd {
			r("ct mark & %#x == %#x drop", MarkMask, MarkLoopbackForged)
			if !out {
				r("ct mark & %#x == %#x drop", MarkMask, MarkLoopbackExempt)
			}
		}
		if out {
			// Source routes (see optionsRules).
			for _, rule := range spec.nftOptionsRules() {
				r("%s", rule)
			}
		} else if fwd {
			for _, rule := range nftRouteRules(true) {
				r("%s", rule)
			}
		}
		if spec.notrack && hook != "forward" {
			// The fast path's untracked TCP packets (see iptablesRules; inbound
			// by their socket's mark, which nft reads without changing the
			// packet's).
			if out && lease {
				r("meta l4proto tcp ct state untracked meta mark & %#x == %#x jump %s", MarkMask, MarkFastAllow, nftFastLease)
			} else if out {
				r("meta l4proto tcp ct state untracked meta mark & %#x == %#x accept", MarkMask, MarkFastAllow)
			}
			if out {
				r("tcp flags & (fin|syn|rst|ack) != syn ct state untracked meta mark & %#x == %#x accept", MarkMask, MarkFastFlow)
			} else {
				// The peer's half of a simultaneous open (see iptablesRules).
				// Not one back from its verdict, which the rules below carry
				// out: the socket's mark does not change with it, so the
				// accept by the socket's mark must not take a rejected one.
				r("tcp flags & (syn|ack) == syn ct state untracked meta mark & %#x != %#x meta mark & %#x != %#x %s", MarkMask, MarkAllow, MarkMask, MarkReject, q)
				r("meta l4proto tcp ct state untracked socket mark & %#x %s meta mark & %#x != %#x accept", MarkMask, nftFastMarks(), MarkMask, MarkReject)
			}
		}
		if out {
			// The exact value, not the bit, after the fast path's rules (see
			// iptablesRules).
			r("meta mark & %#x == %#x accept", MarkMask, OwnMark)
		}
		// A packet of a flow already allowed, but a reset's or a SYN (see
		// iptablesRules).
		r("tcp flags & (fin|syn|rst|ack) != syn ct mark & %#x == %#x meta mark & %#x != %#x accept", MarkMask, MarkAllow, MarkMask, MarkReject)
		pinned := out && spec.sockPin != ""
		if pinned {
			// Only from the socket the flow was allowed for (see
			// iptablesRules): sockpin accepts on the pin's match, else
			// returns here.
			r("meta l4proto != tcp ct mark & %#x == %#x meta mark & %#x != %#x jump %s", MarkMask, MarkAllow, MarkMask, MarkReject, nftSockPin)
		} else {
			r("meta l4proto != tcp ct mark & %#x == %#x meta mark & %#x != %#x accept", MarkMask, MarkAllow, MarkMask, MarkReject)
		}
		if !fwd {
			// TCP conntrack cannot place, but a SYN or a reset's (see
			// iptablesRules).
			r("tcp flags & syn == 0 ct state invalid meta mark & %#x != %#x accept", MarkMask, MarkReject)
		}
		if !fwd {
			// A REJECT's reset (see iptablesRules, review16).
			r("tcp flags & rst == rst ct state related accept")
		}
		if out && spec.fastUDP != "" {
			// The kernel fast path's UDP match (see iptablesRules), which nft cannot
			// write: chain udpfast gets it over netlink (addNftBPFMatch), with a goto
			// to udpfast_allow on a match.
			udp := nftUDPFast
			if udpLease {
				udp = nftUDPLease
			}
			r("meta l4proto udp ct state new ct mark & %#x == 0 meta mark & %#x == 0 jump %s", MarkMask, MarkMask, udp)
			if pinned {
				// Another socket on an allowed flow (see iptablesRules).
				r("meta l4proto udp ct mark & %#x == %#x meta mark & %#x == 0 jump %s", MarkMask, MarkAllow, MarkMask, udp)
			}
		}
		if pinned || hook == "input" && spec.sockPin != "" {
			// Back from an allow verdict: the pin records the packet's
			// socket (input: its reversed tuple, for the first local socket
			// that answers on it).
			r("meta l4proto != tcp meta mark & %#x == %#x jump %s", MarkMask, MarkAllow, nftSockPinRec)
		}
		r("meta mark & %#x == %#x ct mark set ct mark & %#x | %#x accept", MarkMask, MarkAllow, ^MarkMask, MarkAllow)
		r("meta mark & %#x == %#x meta l4proto tcp reject with tcp reset", MarkMask, MarkReject)
		r("meta mark & %#x == %#x reject with icmpx type port-unreachable", MarkMask, MarkReject)
		stashed()
		if out && spec.exemptLoopback {
			// A loopback-exempt flow leaving by another interface now
			// (see iptablesRules, review25).
			r("ct mark & %#x == %#x %s", MarkMask, MarkLoopbackExempt, q)
		}
		if pinned {
			// Not from the socket the flow was allowed for (see iptablesRules).
			r("meta l4proto != tcp ct mark & %#x == %#x %s", MarkMask, MarkAllow, q)
		}
		if out && spec.notrack {
			// Held and decided again (see iptablesRules).
			r("meta l4proto tcp ct state untracked meta mark & %#x == %#x %s", MarkMask, MarkFastRedecide, q)
		}
		if out && spec.fastTCP {
			// A SYN the kernel fast path allowed (see iptablesRules).
			fast := fmt.Sprintf("meta mark & %#x == %#x tcp flags & (fin|syn|rst|ack) == syn", MarkMask, MarkFastAllow)
			if lease {
				r("%s jump %s", fast, nftFastLease)
			} else {
				r("%s ct mark & %#x == 0 ct mark set ct mark & %#x | %#x accept", fast, MarkMask, ^MarkMask, MarkAllow)
				r("%s ct mark & %#x == %#x accept", fast, MarkMask, MarkAllow)
			}
		}
		r("tcp flags & (fin|syn|rst|ack) == syn %s", q)
		if hook == "input" {
			// A peer's SYN conntrack calls INVALID (see iptablesRules).
			r("tcp flags & syn == syn ct state invalid drop")
		}
		r("ct mark & %#x == %#x ct direction original %s", MarkMask, MarkRedecide, q)
		if pinned {
			// Not TCP: only from the flow's socket, else held (see
			// iptablesRules, review14).
			r("meta l4proto tcp ct mark & %#x == %#x accept", MarkMask, MarkAllow)
			r("meta l4proto != tcp ct mark & %#x == %#x jump %s", MarkMask, MarkAllow, nftSockPin)
			r("meta l4proto != tcp ct mark & %#x == %#x %s", MarkMask, MarkAllow, q)
			// Any of latch's marks, but only by two changes of it during
			// this walk: held (see iptablesRules, review15).
			r("meta l4proto != tcp ct direction original ct mark & %#x != 0 %s", MarkMask, q)
		} else {
			r("ct mark & %#x == %#x accept", MarkMask, MarkAllow)
		}
		if out && spec.inbound {
			// This host's side of a flow the peer opened with one of
			// latch's marks (MarkRedecide): held and decided as the
			// inbound flow for the sending socket (see iptablesRules,
			// review15). One rule: the mark is set as it is queued. Not
			// over loopback, whose opener is a local socket (review16),
			// nor to a local address out another interface (review18).
			r(`%s != "lo" ct state established ct direction reply ct mark & %#x == %#x fib daddr type != local meta mark set meta mark & %#x | %#x %s`, lo, MarkAllow|OwnMark, MarkAllow, ^MarkMask, MarkRedecideReply, q)
		} else if fwd || hook == "input" {
			// A forwarded flow's other side, or the peer's side of a flow
			// this host opened, while it is marked MarkRedecide (or
			// MarkAllow): decided as the flow (see iptablesRules,
			// review16, review26).
			r("ct state established ct direction reply ct mark & %#x == %#x meta mark set meta mark & %#x | %#x %s", MarkAllow|OwnMark, MarkAllow, ^MarkMask, MarkRedecideReply, q)
		}
		if out || fwd {
			r("meta l4proto tcp ct state new %s", q)
		}
		if fwd {
			r("meta l4proto tcp ct state invalid drop")
		}
		r("meta l4proto udp ct state { new, invalid, untracked } %s", q)
		if spec.holdReplies(out) {
			// Replies on a flow the peer opened and nothing decided (see iptablesRules).
			r("meta l4proto udp ct direction reply %s", q)
		}
		r("meta l4proto { tcp, udp } accept")
		// ICMP as in iptablesRules: everything held but errors about a known flow,
		// answers to the peer's queries and the exceptions of icmpExceptions.
		r("meta l4proto { icmp, ipv6-icmp } ct state related accept")
		r("meta l4proto { icmp, ipv6-icmp } ct state established ct direction reply accept")
		for _, e := range icmpExceptions(false) {
			r("meta l4proto igmp ip ttl %d accept", e.hops)
		}
		for _, e := range icmpExceptions(true) {
			r("icmpv6 type %d ip6 hoplimit %d accept", e.typ, e.hops)
		}
		r("meta l4proto { icmp, ipv6-icmp } %s", q)
		r("ct state { new, invalid, untracked } %s", q)
		if spec.holdReplies(out) {
			r("meta l4proto != { sctp, dccp } ct direction reply %s", q)
		}
	}
	if spec.dnsLogGroup != 0 {
		// DNS queries, first in the output chain (see iptablesRules).
		fmt.Fprintf(&b, "add chain inet %s output { type filter hook output priority filter - 1; policy accept; }\n", nftTable)
		fmt.Fprintf(&b, "add rule inet %s output udp dport 53 ct direction original log group %d\n", nftTable, spec.dnsLogGroup)
		fmt.Fprintf(&b, "add rule inet %s output tcp dport 53 ct direction original log group %d\n", nftTable, spec.dnsLogGroup)
	}
	if spec.notrack {
		// Before conntrack (priority raw): the fast path's TCP packets are not
		// tracked (see iptablesRaw), this host's by their socket's mark, the
		// peer's by their local socket's.
		dns := ""
		if spec.dnsLogGroup != 0 {
			dns = "tcp dport != 53 "
		}
		fmt.Fprintf(&b, "add chain inet %s %s { type filter hook output priority raw; policy accept; }\n", nftTable, nftRawOut)
		fmt.Fprintf(&b, "add rule inet %s %s meta l4proto tcp %smeta mark & %#x %s notrack\n", nftTable, nftRawOut, dns, MarkMask, nftFastMarks())
		if spec.dnsLogGroup != 0 {
			dns = "tcp sport != 53 "
		}
		fmt.Fprintf(&b, "add chain inet %s %s { type filter hook prerouting priority raw; policy accept; }\n", nftTable, nftRawPre)
		// Only a packet addressed to this host (see iptablesRaw): the socket
		// lookup finds a wildcard listener for a forwarded packet too.
		fmt.Fprintf(&b, "add rule inet %s %s meta l4proto tcp %sfib daddr type local socket mark & %#x %s notrack\n", nftTable, nftRawPre, dns, MarkMask, nftFastMarks())
	}
	chain("output", "output", "oifname", true)
	if spec.exemptLoopback {
		// What the loopback return passed, leaving by another interface
		// (see iptablesPost, review24): the conntrack mark first, which
		// rules out most packets in one load.
		fmt.Fprintf(&b, "add chain inet %s %s { type filter hook postrouting priority filter; policy accept; }\n", nftTable, nftPost)
		fmt.Fprintf(&b, "add rule inet %s %s ct mark & %#x == %#x oifname != \"lo\" drop\n", nftTable, nftPost, loopbackMarks, loopbackMarks)
		// An untracked packet (the host's NOTRACK of lo) to a local
		// address out another interface, without latch's bits in its
		// mark (see untrackedPost): the conntrack state first, the fib
		// lookup last.
		b.WriteString(untrackedPost(true))
	}
	if spec.input() {
		fmt.Fprintf(&b, "add chain inet %s input { type filter hook input priority filter - 1; policy accept; }\n", nftTable)
	}
	if spec.dnsLogGroup != 0 {
		fmt.Fprintf(&b, "add rule inet %s input udp sport 53 ct state established ct direction reply log group %d\n", nftTable, spec.dnsLogGroup)
		fmt.Fprintf(&b, "add rule inet %s input tcp sport 53 ct state established ct direction reply log group %d\n", nftTable, spec.dnsLogGroup)
	}
	if spec.inbound {
		chain("input", "input", "iifname", false)
	}
	if spec.forward {
		chain("forward", "forward", "iifname", false)
	}
	return b.String()
}

func (fw *nftFirewall) install(spec ruleSpec) error {
	rules := spec.nftRules()
	if _, err := run("", "nft", "list", "table", "inet", nftTable); err == nil {
		// Replace a stopped daemon's table in the same transaction, never leaving a
		// moment without one.
		rules = fmt.Sprintf("delete table inet %s\n", nftTable) + rules
	}
	if _, err := run(rules, "nft", "-f", "-"); err != nil {
		if spec.notrack {
			return fmt.Errorf("%w: install nftables ruleset: %w", errNotrack, err)
		}
		return fmt.Errorf("install nftables ruleset: %w", err)
	}
	fw.installed = true
	if spec.lease != "" && spec.fastTCP {
		// Until this rule is in, fast SYNs go to the queue (a live daemon
		// decides them).
		if err := addNftBPFMatch(nftTable, nftFastLease, nftFastPass, spec.lease); err != nil {
			return fmt.Errorf("%w: %w", errFastLease, err)
		}
	}
	if spec.sockPin != "" {
		// Until these rules are in, every packet of an allowed UDP flow is
		// queued (and decided again for its socket).
		if err := addNftBPFMatch(nftTable, nftSockPin, nftSockPinPass, spec.sockPin); err != nil {
			return fmt.Errorf("%w: %w", errSocketPin, err)
		}
		if err := addNftBPFMatch(nftTable, nftSockPinRec, nftSockPinRecDone, spec.sockPin); err != nil {
			return fmt.Errorf("%w: %w", errSocketPin, err)
		}
	}
	if spec.stash != "" {
		// Until this rule is in, a queued datagram has no sender recorded:
		// where its port is shared it is attributed to no program.
		if err := addNftBPFMatch(nftTable, nftSendStash, nftSendStashDone, spec.stash); err != nil {
			return fmt.Errorf("%w: %w", errSenderStash, err)
		}
	}
	if spec.fastUDP != "" {
		// Until this rule is in, UDP goes through the queue as without it.
		if err := addNftBPFMatch(nftTable, nftUDPFast, nftUDPFastAllow, spec.fastUDP); err != nil {
			return fmt.Errorf("%w: %w", errFastUDP, err)
		}
		if spec.lease != "" {
			if err := addNftBPFMatch(nftTable, nftUDPLease, nftUDPFast, spec.lease); err != nil {
				return fmt.Errorf("%w: %w", errFastLease, err)
			}
		}
	}
	return nil
}

// optMatches: nft reads the header length and routing header itself.
func (fw *nftFirewall) optMatches() error { return nil }

func (fw *nftFirewall) remove() error {
	if !fw.installed {
		return nil
	}
	fw.installed = false
	if _, err := run("", "nft", "delete", "table", "inet", nftTable); err != nil {
		return fmt.Errorf("remove nftables ruleset: %w", err)
	}
	return nil
}

func (fw *nftFirewall) leftover() (bool, []uint16, error) {
	out, err := run("", "nft", "list", "table", "inet", nftTable)
	if err != nil {
		return false, nil, nil
	}
	var queues []uint16
	for _, m := range regexp.MustCompile(`queue (?:flags bypass )?(?:num|to) (\d+)`).FindAllStringSubmatch(out, -1) {
		if n, err := strconv.ParseUint(m[1], 10, 16); err == nil && !containsQueue(queues, uint16(n)) {
			queues = append(queues, uint16(n))
		}
	}
	return true, queues, nil
}

func (fw *nftFirewall) removeLeftover() error {
	if _, err := run("", "nft", "delete", "table", "inet", nftTable); err != nil {
		return fmt.Errorf("remove leftover nftables table inet %s: %w", nftTable, err)
	}
	return nil
}
