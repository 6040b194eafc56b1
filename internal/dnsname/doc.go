// Package dnsname learns which hostname a program asked for before it connected to an
// address, so that latch can show "firefox wants example.com:443" and match rules on
// names.
//
// On Linux netfilter NFLOG rules copy every DNS query the host sends (UDP to port 53)
// and every DNS response it receives on a flow it opened (UDP from port 53) to
// ListenNFLOG, which hands them to a Learner. The Learner keeps the queries waiting
// for an answer, and records the addresses of a response in a Cache only if the
// response is the first answer to a waiting query (same client and server address and
// port, transaction id, and question: name byte for byte as sent, type and class)
// within AnswerWindow; everything else is counted by reason (Stats) and teaches
// nothing. The question's name labels what its type asks for (A or AAAA records),
// following a CNAME chain back, so for
//
//	www.example.com. CNAME e1.cdn.example.net.
//	e1.cdn.example.net. A 198.18.5.5
//
// 198.18.5.5 is labelled www.example.com. NFLOG never holds a packet, so DNS is never
// delayed by latch, and a lost copy only costs a label. A backend then fills
// engine.Request.Host with Cache.LookupWait(remote address, a few ms): a program
// connects the moment its answer arrives, often before the copy has been applied, and
// LookupWait waits for it then (and only then; measured: up to ~0.2 ms).
//
// Names are kept per program as well as machine-wide: with Learner.SetAttributor,
// each query is credited to the program (Program: executable, identity, container,
// user) whose socket sent it, and its answer teaches that program's own names;
// Cache.LookupForWait returns a program's own name for an address, or the machine-wide
// one, saying which.
//
// Names are learned from plain DNS over UDP and over TCP (Learner.Segment follows each
// connection to port 53 from its SYN). A local stub resolver is fine (the queries to
// systemd-resolved on 127.0.0.53 and its responses cross loopback and are seen), but
// DNS over TLS or HTTPS (package encdns flags those connections) and names a program cached
// itself before latch started leave the host unknown. An attacker on the path who
// sees a query can still answer it first, as the program itself would believe; only a
// resolver of latch's own would close that.
package dnsname
