// Package dnsname learns which hostname a program asked for before it connected to an
// address, so that latch can show "firefox wants example.com:443" and match rules on
// names.
//
// On Linux a netfilter NFLOG rule copies every DNS response arriving in the namespace
// (UDP source port 53) to ListenNFLOG, which parses it (ParsePacket) and records each
// answered address in a Cache under the question's name: a CNAME chain is followed
// back, so for
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
// Names are only learned from plain DNS over UDP. A local stub resolver is fine (the
// responses of systemd-resolved on 127.0.0.53 cross loopback and are seen), but answers
// over TCP, DNS over TLS or HTTPS, and names a program cached itself before latch
// started leave the host unknown.
package dnsname
