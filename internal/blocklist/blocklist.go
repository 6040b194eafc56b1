// Package blocklist reads lists of domains and addresses in the common formats and
// answers, fast and in little memory, whether a hostname (by suffix) or an address is
// listed. Formats, detected per line:
//
//	0.0.0.0 ads.example.com tracker.example   hosts file (any address; every name after it)
//	ads.example.com                           a plain domain
//	||ads.example.com^                        AdBlock domain rule (options after '$' are ignored)
//	198.18.0.0/15, 198.18.7.7, 2001:db8::/32  addresses and CIDR prefixes
//
// '#' starts a comment (also after an entry), '!' and '[' lines are AdBlock comments
// and headers; empty lines are skipped, as are the hosts file's own names (localhost,
// broadcasthost, ...). A domain matches itself and every name below it. Any other line
// is an error naming the line, and nothing is loaded.
package blocklist

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// MaxLineLen bounds one line of a list.
const MaxLineLen = 4096

// List is a parsed list: a set of domains and of address prefixes.
type List struct {
	domains  domainSet
	prefixes map[int]map[netip.Prefix]struct{} // by prefix length
	nPrefix  int
}

// Stats count a list's entries.
type Stats struct {
	Domains  int `json:"domains"`
	Prefixes int `json:"prefixes"`
}

// Stats returns how many domains and prefixes l holds.
func (l *List) Stats() Stats { return Stats{Domains: l.domains.n, Prefixes: l.nPrefix} }

var hostsOwnNames = map[string]bool{
	"localhost": true, "localhost.localdomain": true, "local": true, "broadcasthost": true,
	"ip6-localhost": true, "ip6-loopback": true, "ip6-localnet": true, "ip6-mcastprefix": true,
	"ip6-allnodes": true, "ip6-allrouters": true, "ip6-allhosts": true, "0.0.0.0": true,
}

// ParseError is a bad line of a list.
type ParseError struct {
	Line int   // 1-based
	Err  error // what is wrong, quoting the line
}

func (e *ParseError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

func (e *ParseError) Unwrap() error { return e.Err }

// withoutText returns err without the text of the line it quotes, for a file whose
// reader may not be the one who sees the error (the daemon reads its copies and, once,
// an older latch's list files, and every member of the API group sees their errors).
func withoutText(err error) error {
	var pe *ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("line %d: not a list entry or too long (the line is not shown)", pe.Line)
	}
	return err
}

// Parse reads a list. The error, a *ParseError, names the first bad line (1-based) and
// what is wrong, quoting it.
func Parse(r io.Reader) (*List, error) {
	l := &List{prefixes: map[int]map[netip.Prefix]struct{}{}}
	var names []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLineLen+1)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if len(text) > MaxLineLen {
			return nil, &ParseError{line, fmt.Errorf("longer than %d bytes", MaxLineLen)}
		}
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		text = strings.TrimSpace(text)
		if text == "" || text[0] == '!' || text[0] == '[' {
			continue
		}
		if rest, ok := strings.CutPrefix(text, "||"); ok {
			if i := strings.IndexByte(rest, '$'); i >= 0 {
				rest = rest[:i]
			}
			d, ok := strings.CutSuffix(rest, "^")
			if !ok {
				return nil, &ParseError{line, fmt.Errorf("AdBlock rule %q: only domain rules ||domain^ are understood", text)}
			}
			n, err := domain(d)
			if err != nil {
				return nil, &ParseError{line, err}
			}
			names = append(names, n)
			continue
		}
		fields := strings.Fields(text)
		if a, err := netip.ParseAddr(fields[0]); err == nil && len(fields) > 1 {
			_ = a // hosts file: the address is where the names were sent; the names are listed
			for _, f := range fields[1:] {
				if hostsOwnNames[strings.ToLower(f)] {
					continue
				}
				n, err := domain(f)
				if err != nil {
					return nil, &ParseError{line, err}
				}
				names = append(names, n)
			}
			continue
		}
		if len(fields) != 1 {
			return nil, &ParseError{line, fmt.Errorf("%q: want a domain, an address or prefix, a hosts line or ||domain^", text)}
		}
		if p, ok, err := prefix(fields[0]); ok {
			if err != nil {
				return nil, &ParseError{line, err}
			}
			m := l.prefixes[p.Bits()]
			if m == nil {
				m = map[netip.Prefix]struct{}{}
				l.prefixes[p.Bits()] = m
			}
			if _, dup := m[p]; !dup {
				m[p] = struct{}{}
				l.nPrefix++
			}
			continue
		}
		n, err := domain(fields[0])
		if err != nil {
			return nil, &ParseError{line, err}
		}
		names = append(names, n)
	}
	if err := sc.Err(); err != nil {
		return nil, &ParseError{line + 1, err}
	}
	l.domains = newDomainSet(names)
	return l, nil
}

// prefix parses an address or CIDR prefix; ok is false if s is neither.
func prefix(s string) (netip.Prefix, bool, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			if _, aerr := netip.ParseAddr(s[:strings.IndexByte(s, '/')]); aerr != nil {
				return netip.Prefix{}, false, nil
			}
			return netip.Prefix{}, true, fmt.Errorf("prefix %q: %v", s, err)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, true, fmt.Errorf("prefix %q: zones are not allowed", s)
		}
		return netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-map[bool]int{true: 96}[p.Addr().Is4In6()], 0)).Masked(), true, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, false, nil
	}
	if a.Zone() != "" {
		return netip.Prefix{}, true, fmt.Errorf("address %q: zones are not allowed", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), true, nil
}

// domain checks a listed name and returns it in normal form (lower case, no trailing
// dot).
func domain(s string) (string, error) {
	d := strings.ToLower(strings.TrimSuffix(s, "."))
	if d == "" || len(d) > 253 {
		return "", fmt.Errorf("domain %q: want 1 to 253 characters", s)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("domain %q: empty label or one longer than 63", s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("domain %q: character %q: want letters, digits, '-' or '_'", s, c)
			}
		}
	}
	return d, nil
}

// MatchHost reports whether host or a domain above it is listed. host may be in any
// case and end in a dot.
func (l *List) MatchHost(host string) bool {
	if l == nil || l.domains.n == 0 || host == "" {
		return false
	}
	h := strings.TrimSuffix(host, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; 'A' <= c && c <= 'Z' {
			h = strings.ToLower(h)
			break
		}
	}
	for {
		if l.domains.has(h) {
			return true
		}
		i := strings.IndexByte(h, '.')
		if i < 0 {
			return false
		}
		h = h[i+1:]
	}
}

// MatchAddr reports whether a is in a listed prefix.
func (l *List) MatchAddr(a netip.Addr) bool {
	if l == nil || l.nPrefix == 0 || !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for bits, m := range l.prefixes {
		if bits > a.BitLen() {
			continue
		}
		p, err := a.Prefix(bits)
		if err != nil {
			continue
		}
		if _, ok := m[p]; ok {
			return true
		}
	}
	return false
}

// domainSet is a set of names in one byte arena with an open-addressing table of
// offsets: about 1 byte per character plus 8 per name, instead of a Go map's ~70.
type domainSet struct {
	arena []byte   // each name: one length byte, then its bytes
	table []uint32 // offset+1 into arena; 0: empty. Size: a power of two >= 2n
	n     int
}

func fnv(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func newDomainSet(names []string) domainSet {
	size := 16
	for size < 2*len(names) {
		size <<= 1
	}
	total := 0
	for _, n := range names {
		total += 1 + len(n)
	}
	s := domainSet{arena: make([]byte, 0, total), table: make([]uint32, size)}
	for _, n := range names {
		if s.has(n) {
			continue
		}
		off := len(s.arena)
		s.arena = append(s.arena, byte(len(n)))
		s.arena = append(s.arena, n...)
		mask := uint64(size - 1)
		for i := fnv(n) & mask; ; i = (i + 1) & mask {
			if s.table[i] == 0 {
				s.table[i] = uint32(off + 1)
				break
			}
		}
		s.n++
	}
	return s
}

func (s *domainSet) has(name string) bool {
	if len(s.table) == 0 {
		return false
	}
	mask := uint64(len(s.table) - 1)
	for i := fnv(name) & mask; ; i = (i + 1) & mask {
		o := s.table[i]
		if o == 0 {
			return false
		}
		off := int(o - 1)
		l := int(s.arena[off])
		if l == len(name) && string(s.arena[off+1:off+1+l]) == name {
			return true
		}
	}
}
