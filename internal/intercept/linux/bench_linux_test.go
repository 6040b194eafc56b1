package linux

import (
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/intercept/linux/nfq"
)

// BenchmarkConnect measures connect() from namespace A to a server in B, one at a time,
// with no queue ("none"), with the minimal accept-everything NFQUEUE reader ("floor")
// and with this backend allowing everything ("backend", no attribution;
// "backend+attribution" with procattr's sock_diag and procfs methods). It reports the
// median and p99 in µs; compare backend against floor in the same run:
//
//	go test -run '^$' -bench Connect ./internal/intercept/linux
//
// With LATCH_BENCH_CPUPROFILE_DIR=DIR the backend children write CPU profiles there,
// one per scenario (DIR/backend-attribution-ebpf.pprof, ...).
func BenchmarkConnect(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	for _, sc := range []struct {
		name string
		mode string
		env  []string
	}{
		{"none", "", nil},
		{"floor", "floor", nil},
		{"floor+latch-ruleset", "floor", []string{"LATCH_TEST_FLOOR_LATCH_RULES=1"}},
		{"backend", "daemon", []string{"LATCH_TEST_QUIET=1"}},
		{"backend+instant-resolver", "daemon", []string{"LATCH_TEST_QUIET=1", "LATCH_TEST_ATTRIBUTE=instant"}},
		{"backend+instant-resolver+accounting", "daemon", []string{"LATCH_TEST_QUIET=1", "LATCH_TEST_ATTRIBUTE=instant", "LATCH_TEST_TRAFFIC_INTERVAL=10s", "LATCH_TEST_TRAFFIC_SILENT=1"}},
		{"backend+attribution", "daemon", []string{"LATCH_TEST_QUIET=1", "LATCH_TEST_ATTRIBUTE=1"}},
		{"backend+attribution+ebpf", "daemon", []string{"LATCH_TEST_QUIET=1", "LATCH_TEST_ATTRIBUTE=ebpf"}},
	} {
		b.Run(sc.name, func(b *testing.B) {
			tp := newTopo(b)
			listenTCP(b, tp, 9001)
			if sc.mode != "" {
				env := sc.env
				if dir := os.Getenv("LATCH_BENCH_CPUPROFILE_DIR"); dir != "" {
					env = append(env, "LATCH_TEST_CPUPROFILE="+filepath.Join(dir, strings.ReplaceAll(sc.name, "+", "-")+".pprof"))
				}
				d := spawnChild(b, tp, sc.mode, "*=allow", env...)
				if _, ok := d.waitLine("ready", 15*time.Second); !ok {
					b.Fatalf("%s did not become ready: %s", sc.name, d.errors())
				}
				defer func() {
					d.stop() // SIGTERM: the child writes its profile
					// CPU the reader process spent per connect: steadier than latency on
					// a busy machine, and what the reader's own work costs.
					cpu := d.cmd.ProcessState.UserTime() + d.cmd.ProcessState.SystemTime()
					b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "reader-cpu-µs/op")
				}()
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			err := inNS(tp.a, func() error {
				for range b.N {
					start := time.Now()
					c, err := net.DialTimeout("tcp4", addrB+":9001", 5*time.Second)
					if err != nil {
						return err
					}
					lat = append(lat, time.Since(start))
					c.Close()
				}
				return nil
			})
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "median-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
		})
	}
}

// BenchmarkHandle is the backend's own work for one held SYN, without the kernel:
// parse the queued packet, build the Request, attribute it (instantResolver), decide
// (allow at once) and account for the verdict. The queue is not bound, so no
// verdict is written (that syscall is in BenchmarkConnect) and no flow remembered.
func BenchmarkHandle(b *testing.B) {
	be, err := New(Config{Firewall: FirewallIptablesNft, Resolver: instantResolver{}})
	if err != nil {
		b.Skip(err)
	}
	syn := []byte{
		0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2, // IPv4
		0xc3, 0x50, 0x23, 0x29, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0, // TCP SYN
	}
	allow := intercept.DeciderFunc(func(_ *engine.Request, verdict func(engine.Verdict)) {
		verdict(engine.Verdict{Action: engine.Allow, Reason: engine.ReasonRule})
	})
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p := nfq.Packet{ID: uint32(i), HWProto: 0x0800, Hook: hookLocalOut, HasUID: true, Payload: syn, Time: now}
		be.handle(&p, allow)
	}
	if n := be.held.Load(); n != uint64(b.N) {
		b.Fatalf("held %d of %d packets", n, b.N)
	}
}
