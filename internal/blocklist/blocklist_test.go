package blocklist

import (
	"bytes"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseFormats(t *testing.T) {
	l, err := Parse(strings.NewReader(`# a hosts file
127.0.0.1 localhost
0.0.0.0 ads.example.com tracker.example.net # comment
::1 ip6-localhost
[Adblock Plus 2.0]
! adblock comment
||doubleclick.test^
||metrics.example.org^$third-party
Plain.Example.
198.18.0.0/16
198.19.7.7
2001:db8::/32
`))
	if err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Domains != 5 || st.Prefixes != 3 {
		t.Errorf("stats %+v, want 5 domains, 3 prefixes", st)
	}
	for host, want := range map[string]bool{
		"ads.example.com": true, "x.ads.example.com": true, "ADS.example.com.": true, "example.com": false,
		"doubleclick.test": true, "a.b.doubleclick.test": true, "metrics.example.org": true, "plain.example": true,
		"tracker.example.net": true, "localhost": false, "notads.example.com": false, "": false,
	} {
		if got := l.MatchHost(host); got != want {
			t.Errorf("MatchHost(%q) = %v, want %v", host, got, want)
		}
	}
	for addr, want := range map[string]bool{
		"198.18.3.4": true, "198.19.7.7": true, "198.19.7.8": false, "2001:db8::1": true, "::ffff:198.18.0.1": true, "10.0.0.1": false,
	} {
		if got := l.MatchAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("MatchAddr(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{
		"good.example\nbad domain with spaces\n",
		"||a.example\n",           // no ^
		"||/path^\n",              // not a domain
		"0.0.0.0 bad_host!\n",     // bad name in hosts line
		"198.18.0.1/33\n",         // bad prefix
		"fe80::1%eth0\n",          // zone
		strings.Repeat("a", 5000), // too long
		"ex*ample.com\n",
	} {
		if l, err := Parse(strings.NewReader(in)); err == nil {
			t.Errorf("Parse(%.40q) = %+v, want an error", in, l.Stats())
		} else if !strings.HasPrefix(err.Error(), "line ") {
			t.Errorf("Parse(%.40q): error %q does not name the line", in, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"0.0.0.0 a.example b.example\n", "||x.test^$opt\n", "198.18.0.0/15\n", "plain.example\n# c\n", "[h]\n!c\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		// Every plain-domain line that parsed is matched, and so are names below it.
		for _, line := range strings.Split(s, "\n") {
			line = strings.TrimSpace(line)
			if d, err := domain(line); err == nil && !strings.ContainsAny(line, "#!/[|") {
				if _, perr := netip.ParseAddr(line); perr == nil {
					continue
				}
				if !l.MatchHost(d) || !l.MatchHost("sub."+d) {
					t.Fatalf("listed %q does not match", d)
				}
			}
		}
	})
}

// BenchmarkMillion loads 1,000,000 domains and measures the memory they take, the
// load time and a lookup (listed, below a listed one, and not listed).
func BenchmarkMillion(b *testing.B) {
	var buf bytes.Buffer
	for i := range 1_000_000 {
		fmt.Fprintf(&buf, "0.0.0.0 ads%d.tracker%d.example\n", i, i%5000)
	}
	data := buf.Bytes()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	l, err := Parse(bytes.NewReader(data))
	if err != nil {
		b.Fatal(err)
	}
	load := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(data) // held across both readings: only the list differs
	hosts := []string{"ads123.tracker123.example", "x.ads999999.tracker4999.example", "www.example.org", "a.b.c.d.e.notlisted.test"}
	n := 0
	for b.Loop() {
		if l.MatchHost(hosts[n&3]) {
			n += 4
		}
		n++
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MB-held")
	b.ReportMetric(load.Seconds(), "s-load")
	runtime.KeepAlive(l)
}
