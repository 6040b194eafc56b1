// Package encdns recognises connections to encrypted DNS services: DNS over HTTPS
// (DoH: TCP or UDP port 443 of a listed address or name) and DNS over TLS or QUIC
// (DoT/DoQ: port 853, to any address). Names a program resolves that way are not
// visible to latch, so such a connection is flagged (engine.Request.Note) in
// questions and history, and `latch rules preset block-encrypted-dns` turns the list
// into deny rules. The list shipped with latch (endpoints.txt) is embedded in the
// binary; a file in the same format replaces it.
package encdns

import (
	"bufio"
	_ "embed"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/latchfw/latch/internal/engine"
)

//go:embed endpoints.txt
var shipped string

// Note is the start of Request.Note for a connection to an encrypted DNS service.
const Note = "encrypted DNS: names after this are not visible"

// Ports.
const (
	PortDoH = 443 // DNS over HTTPS (TCP), or over HTTP/3 (UDP)
	PortDoT = 853 // DNS over TLS (TCP), or over QUIC (UDP)
)

// Endpoint is one line of a list: an address prefix or a hostname, and the service.
type Endpoint struct {
	Prefix  netip.Prefix // valid for an address or CIDR line
	Host    string       // normal form (lower case, no trailing dot) for a name line
	Service string
}

// List is a set of encrypted DNS endpoints.
type List struct {
	Endpoints []Endpoint
}

// Shipped returns the list embedded in latch.
func Shipped() *List {
	l, err := Parse(strings.NewReader(shipped))
	if err != nil {
		panic("encdns: the shipped list does not parse: " + err.Error())
	}
	return l
}

// Load reads a list file (see Parse).
func Load(path string) (*List, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("encrypted DNS list: %w", err)
	}
	defer f.Close()
	l, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("encrypted DNS list %s: %w", path, err)
	}
	return l, nil
}

// Parse reads a list: one endpoint a line, an address, CIDR prefix or hostname, then
// the service's name; blank lines and text after '#' are ignored. A line that is none
// of those is an error naming the line, and nothing is returned.
func Parse(r io.Reader) (*List, error) {
	l := &List{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		e := Endpoint{Service: strings.Join(fields[1:], " ")}
		if e.Service == "" {
			e.Service = fields[0]
		}
		if p, err := netip.ParsePrefix(fields[0]); err == nil {
			e.Prefix = p.Masked()
		} else if a, err := netip.ParseAddr(fields[0]); err == nil {
			e.Prefix = netip.PrefixFrom(a.Unmap().WithZone(""), a.Unmap().BitLen())
		} else if h, err := engine.ParseHost(fields[0]); err == nil && h != "" && !strings.HasPrefix(h, "*") {
			e.Host = h
		} else {
			return nil, fmt.Errorf("line %d: %q is not an address, prefix or hostname", n, fields[0])
		}
		l.Endpoints = append(l.Endpoints, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return l, nil
}

// Match says whether req goes to an encrypted DNS service, and if so the note to
// show: Note, then the kind and service in parentheses.
func (l *List) Match(req *engine.Request) (string, bool) {
	if req.Protocol != engine.TCP && req.Protocol != engine.UDP {
		return "", false
	}
	port := req.Remote.Port()
	if req.Direction == engine.Inbound {
		return "", false
	}
	if port == PortDoT {
		return Note + " (DNS over TLS/QUIC, port 853)", true
	}
	if port != PortDoH || l == nil {
		return "", false
	}
	addr := req.Remote.Addr().Unmap().WithZone("")
	host := strings.TrimSuffix(strings.ToLower(req.Host), ".")
	for _, e := range l.Endpoints {
		if (e.Prefix.IsValid() && e.Prefix.Contains(addr)) || (e.Host != "" && e.Host == host) {
			return Note + " (DNS over HTTPS, " + e.Service + ")", true
		}
	}
	return "", false
}

// BlockRules returns deny rules for every endpoint of l, and for port 853 to
// anywhere: the preset block-encrypted-dns. They name no program, so they apply to
// all; a more specific allow rule (an app) still wins, as precedence says.
func (l *List) BlockRules() []engine.Rule {
	rules := []engine.Rule{
		{Protocol: engine.TCP, Port: engine.PortRange{Lo: PortDoT, Hi: PortDoT}, Action: engine.Deny, Note: "preset block-encrypted-dns: DNS over TLS"},
		{Protocol: engine.UDP, Port: engine.PortRange{Lo: PortDoT, Hi: PortDoT}, Action: engine.Deny, Note: "preset block-encrypted-dns: DNS over QUIC"},
	}
	for _, e := range l.Endpoints {
		r := engine.Rule{Port: engine.PortRange{Lo: PortDoH, Hi: PortDoH}, Action: engine.Deny,
			Note: "preset block-encrypted-dns: DNS over HTTPS, " + e.Service}
		if e.Prefix.IsValid() {
			r.Remote = e.Prefix
		} else {
			r.Host = e.Host
		}
		rules = append(rules, r)
	}
	return rules
}
