package linux

import (
	"fmt"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
)

// BenchmarkDNSSendersPut: the cost per held DNS query of recording its sender, in a
// table kept full by one user's flood (the case review 40 is about) and in one
// that is not full.
func BenchmarkDNSSendersPut(b *testing.B) {
	qs := make([]dnsname.Query, 8192)
	for i := range qs {
		qs[i] = dnsQuery(fmt.Sprintf("198.18.0.1:%d", 20000+i), fmt.Sprintf("198.18.%d.%d:53", 1+i/250, 1+i%250), uint16(i), "x.test")
	}
	dig := dnsname.Program{Exe: "/usr/bin/dig", UID: 1000}
	for _, full := range []bool{false, true} {
		b.Run(fmt.Sprintf("full=%v", full), func(b *testing.B) {
			tab := newDNSSenders(4096, 5*time.Second)
			now := time.Unix(1000, 0)
			if !full {
				tab = newDNSSenders(1<<20, 5*time.Second)
			}
			for i := 0; b.Loop(); i++ {
				tab.put(&qs[i%len(qs)], dig, now)
			}
		})
	}
}
