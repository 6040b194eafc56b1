//go:build linux

// Command bench measures what latch costs a program that connects: connect() latency
// (median, p99) and connections per second, in one run, for
//
//   - none:  no firewall at all;
//   - floor: a minimal NFQUEUE reader that accepts everything (the price of the kernel
//     round trip itself, which no queue-based firewall can avoid);
//   - latch: the latch daemon with 10,000 rules loaded and process attribution on;
//   - latch+sinks: the same with every observer on: metrics (--metrics), a JSON-lines
//     events file, a syslog collector over TCP (a reader that discards), and an API
//     follower (`latch events --follow --json`) — to compare with latch.
//   - latch-noacct: the same with byte accounting off (--accounting=false);
//
// and bulk throughput over one allowed connection (-bulk MiB per round), and reports
// latch's added latency as a multiple of the floor's, and what byte accounting costs
// (latch against latch-noacct: connects per second and bulk throughput). Each scenario runs in
// fresh network namespaces joined by a veth pair (198.18.0.0/15). Needs root.
//
//	sudo go run ./test/bench [-n 2000] [-conc 8] [-rules 10000] [-rounds 5] [-bulk 64]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept/linux/nfq"
	"github.com/latchfw/latch/test/nettest"
)

const benchPort = 9000

// Measurement is one scenario's numbers, as the client role prints them.
type Measurement struct {
	Scenario string  `json:"scenario"`
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
	ConnPerS float64 `json:"conn_per_s"`
	Connects int     `json:"connects"`
	BulkMiBs float64 `json:"bulk_mib_s"`
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "role-client":
			roleClient(os.Args[2:])
			return
		case "role-server":
			roleServer(os.Args[2])
			return
		case "role-sink":
			roleSink(os.Args[2])
			return
		case "role-bulk":
			roleBulk(os.Args[2], os.Args[3])
			return
		case "role-floor":
			roleFloor()
			return
		case "role-collector":
			roleCollector(os.Args[2])
			return
		}
	}
	n := flag.Int("n", 2000, "connects per phase (sequential latency, then concurrent throughput)")
	conc := flag.Int("conc", 8, "concurrent connecting workers in the throughput phase")
	nrules := flag.Int("rules", 10000, "rules loaded into latch")
	rounds := flag.Int("rounds", 5, "interleaved rounds the connects are split into")
	latchBin := flag.String("latch", "", "latch binary (default: build ./cmd/latch)")
	bulk := flag.Int("bulk", 64, "MiB sent over one connection per scenario and round (0: no bulk phase)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fatalf("bench needs root (network namespaces, netfilter)")
	}
	self, err := os.Executable()
	if err != nil {
		fatalf("%v", err)
	}
	dir, err := os.MkdirTemp("", "latch-bench-")
	if err != nil {
		fatalf("%v", err)
	}
	defer os.RemoveAll(dir)
	atExit = append(atExit, func() { os.RemoveAll(dir) })
	// Copy ourselves to a stable path: the latch scenario allows this executable by path.
	client := filepath.Join(dir, "latch-bench-client")
	if out, err := exec.Command("cp", self, client).CombinedOutput(); err != nil {
		fatalf("cp: %v: %s", err, out)
	}
	if *latchBin == "" {
		*latchBin = filepath.Join(dir, "latch")
		if out, err := exec.Command("go", "build", "-o", *latchBin, "./cmd/latch").CombinedOutput(); err != nil {
			fatalf("go build ./cmd/latch (run from the repository root): %v\n%s", err, out)
		}
	}

	// The three set-ups stay up side by side and the client visits them in turn, a
	// slice of the connects each round: a machine whose speed drifts (a shared VM)
	// then shifts all three alike instead of whichever ran last.
	names := []string{"none", "floor", "latch", "latch+sinks", "latch-noacct"}
	var targets []*target
	for _, sc := range names {
		tg, err := setup(sc, client, *latchBin, dir, *nrules)
		if tg != nil {
			atExit = append(atExit, tg.close)
			defer tg.close()
		}
		if err != nil {
			fatalf("scenario %s: %v", sc, err)
		}
		targets = append(targets, tg)
	}
	per := max(*n / *rounds, 1)
	for r := 0; r < *rounds; r++ {
		for _, tg := range targets {
			if err := tg.measure(client, per, *conc); err != nil {
				fatalf("scenario %s: %v", tg.name, err)
			}
			if *bulk > 0 {
				if err := tg.measureBulk(client, *bulk); err != nil {
					fatalf("scenario %s: bulk: %v", tg.name, err)
				}
			}
		}
	}
	var results []Measurement
	for _, tg := range targets {
		results = append(results, tg.result())
	}
	report(results, per**rounds, *conc, *nrules, *rounds)
	reportAccounting(results, *bulk, *rounds)
}

// target is one scenario's namespaces and processes, and the samples taken so far.
type target struct {
	name    string
	pair    *nettest.Pair
	addr    string
	procs   []*exec.Cmd
	latency []float64 // µs, every sequential connect
	conns   int       // connects of the concurrent phases
	seconds float64   // their wall time
	failed  int

	sinkAddr    string
	bulkBytes   int64
	bulkSeconds float64
}

func (tg *target) close() {
	for i := len(tg.procs) - 1; i >= 0; i-- {
		stop(tg.procs[i])
	}
	tg.pair.Close()
}

// measure runs one round: n sequential connects, then n from conc workers.
func (tg *target) measure(client string, n, conc int) error {
	out, err := nettest.Command(tg.pair.Client, client, "role-client", tg.addr, fmt.Sprint(n), fmt.Sprint(conc)).Output()
	if err != nil {
		return fmt.Errorf("client: %v", err)
	}
	var r clientRound
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("client output %q: %v", out, err)
	}
	if r.Failed > 0 {
		return fmt.Errorf("%d of %d connects failed", r.Failed, 2*n)
	}
	tg.latency = append(tg.latency, r.LatencyUS...)
	tg.conns += n
	tg.seconds += r.Seconds
	return nil
}

func (tg *target) result() Measurement {
	slices.Sort(tg.latency)
	m := Measurement{Scenario: tg.name, Connects: len(tg.latency) + tg.conns}
	if k := len(tg.latency); k > 0 {
		m.MedianUS = tg.latency[k/2]
		m.P99US = tg.latency[k*99/100]
	}
	if tg.seconds > 0 {
		m.ConnPerS = float64(tg.conns) / tg.seconds
	}
	if tg.bulkSeconds > 0 {
		m.BulkMiBs = float64(tg.bulkBytes) / (1 << 20) / tg.bulkSeconds
	}
	return m
}

// clientRound is what the client role prints for one round.
type clientRound struct {
	LatencyUS []float64 `json:"latency_us"`
	Seconds   float64   `json:"seconds"` // wall time of the concurrent phase
	Failed    int       `json:"failed"`
}

// setup makes one scenario's namespaces and starts its server and, for floor and
// latch, its queue reader. On error the target returned (if any) must still be closed.
func setup(name, client, latchBin, dir string, nrules int) (*target, error) {
	p, err := nettest.NewPair()
	if err != nil {
		return nil, err
	}
	tg := &target{name: name, pair: p, addr: fmt.Sprintf("%s:%d", p.ServerIP, benchPort)}
	addr := tg.addr
	srv := nettest.Command(p.Server, client, "role-server", addr)
	if err := startAndWait(srv, "listening"); err != nil {
		return tg, fmt.Errorf("server: %v", err)
	}
	tg.procs = append(tg.procs, srv)
	tg.sinkAddr = fmt.Sprintf("%s:%d", p.ServerIP, benchPort+1)
	sink := nettest.Command(p.Server, client, "role-sink", tg.sinkAddr)
	if err := startAndWait(sink, "listening"); err != nil {
		return tg, fmt.Errorf("sink: %v", err)
	}
	tg.procs = append(tg.procs, sink)

	switch name {
	case "floor":
		// The same match latch uses for TCP: SYNs by flag.
		rule := []string{"-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "SYN,ACK,RST,FIN", "SYN", "-j", "NFQUEUE", "--queue-num", "4300"}
		if out, err := nettest.Command(p.Client, "iptables", rule...).CombinedOutput(); err != nil {
			return tg, fmt.Errorf("iptables: %v: %s", err, out)
		}
		floor := nettest.Command(p.Client, client, "role-floor")
		if err := startAndWait(floor, "reading"); err != nil {
			return tg, fmt.Errorf("floor reader: %v", err)
		}
		tg.procs = append(tg.procs, floor)
	case "latch", "latch+sinks", "latch-noacct":
		state := filepath.Join(dir, "state-"+p.Client)
		api := filepath.Join(dir, p.Client+".sock")
		rulesFile := filepath.Join(dir, "rules.json")
		if err := writeRules(rulesFile, client, p.ServerIP, nrules); err != nil {
			return tg, err
		}
		args := []string{"daemon", "--state-dir", state, "--api", api, "--default", "deny"}
		if name == "latch+sinks" {
			coll := nettest.Command(p.Client, client, "role-collector", "127.0.0.1:5514")
			if err := startAndWait(coll, "listening"); err != nil {
				return tg, fmt.Errorf("collector: %v", err)
			}
			tg.procs = append(tg.procs, coll)
			args = append(args, "--metrics", "127.0.0.1:9184", "--events-file", filepath.Join(dir, p.Client+"-events.jsonl"),
				"--events-syslog", "tcp://127.0.0.1:5514")
		}
		args = append(args, fmt.Sprintf("--accounting=%t", name != "latch-noacct"))
		d := nettest.Command(p.Client, latchBin, args...)
		d.Stdout, d.Stderr = os.Stderr, os.Stderr
		if err := d.Start(); err != nil {
			return tg, err
		}
		tg.procs = append(tg.procs, d)
		if err := waitAPI(latchBin, api); err != nil {
			return tg, err
		}
		cli := exec.Command(latchBin, "rules", "import", rulesFile)
		cli.Env = append(os.Environ(), "LATCH_API="+api)
		if out, err := cli.CombinedOutput(); err != nil {
			return tg, fmt.Errorf("latch rules import: %v: %s", err, out)
		}
		if name == "latch+sinks" {
			follow := exec.Command(latchBin, "events", "--follow", "--json")
			follow.Env = append(os.Environ(), "LATCH_API="+api)
			follow.Stdout = io.Discard
			if err := follow.Start(); err != nil {
				return tg, fmt.Errorf("latch events --follow: %v", err)
			}
			tg.procs = append(tg.procs, follow)
		}
	}
	return tg, nil
}

// writeRules writes nrules-1 rules that do not match the benchmark client (other apps,
// other networks, other ports — a realistic mix) and one that allows it.
func writeRules(path, client, serverIP string, nrules int) error {
	rules := make([]engine.Rule, 0, nrules)
	for i := 1; i < nrules; i++ {
		r := engine.Rule{ID: engine.RuleID(i), Action: engine.Allow, Protocol: engine.TCP, Direction: engine.Outbound}
		switch i % 4 {
		case 0:
			r.App = fmt.Sprintf("/opt/app%d/bin/app", i)
		case 1:
			r.App = fmt.Sprintf("/usr/lib/pkg%d/*", i)
			r.Action = engine.Deny
		case 2:
			r.App = fmt.Sprintf("/usr/bin/tool%d", i)
			r.Remote = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 32)
		case 3:
			r.App = fmt.Sprintf("/usr/local/bin/svc%d", i)
			r.Port = engine.PortRange{Lo: uint16(1000 + i%5000), Hi: uint16(1000 + i%5000)}
		}
		rules = append(rules, r)
	}
	rules = append(rules, engine.Rule{ID: engine.RuleID(nrules), App: client, Action: engine.Allow,
		Protocol: engine.TCP, Port: engine.PortRange{Lo: benchPort, Hi: benchPort + 1}})
	return os.WriteFile(path, engine.MarshalRules(rules), 0o600)
}

func report(ms []Measurement, n, conc, nrules, rounds int) {
	fmt.Printf("connect() to a veth peer, per scenario: %d sequential connects for latency, %d with %d workers for throughput, in %d interleaved rounds\n", n, n, conc, rounds)
	fmt.Printf("%-8s %12s %12s %12s\n", "", "median µs", "p99 µs", "conn/s")
	for _, m := range ms {
		fmt.Printf("%-8s %12.1f %12.1f %12.0f\n", m.Scenario, m.MedianUS, m.P99US, m.ConnPerS)
	}
	none, floor, latch := ms[0], ms[1], ms[2]
	floorAdd := floor.MedianUS - none.MedianUS
	latchAdd := latch.MedianUS - none.MedianUS
	fmt.Printf("added median latency: floor %.1f µs, latch (%d rules, attribution on) %.1f µs\n", floorAdd, nrules, latchAdd)
	if floorAdd > 0 {
		ratio := latchAdd / floorAdd
		verdict := "within"
		if ratio > 1.25 {
			verdict = "OVER"
		}
		fmt.Printf("latch/floor added-latency ratio: %.2fx (target <= 1.25x: %s)\n", ratio, verdict)
	}
	fmt.Printf("throughput: floor %.2fx of none, latch %.2fx of none, latch %.2fx of floor\n",
		floor.ConnPerS/none.ConnPerS, latch.ConnPerS/none.ConnPerS, latch.ConnPerS/floor.ConnPerS)
	if len(ms) > 3 {
		sinks := ms[3]
		diff := (sinks.MedianUS - latch.MedianUS) / latch.MedianUS * 100
		verdict := "within"
		if diff > 5 {
			verdict = "OVER"
		}
		fmt.Printf("all sinks on (metrics, events file, syslog over TCP, API follower) vs off: median %.1f vs %.1f µs (%+.1f%%, target <= 5%%: %s); throughput %.2fx\n",
			sinks.MedianUS, latch.MedianUS, diff, verdict, sinks.ConnPerS/latch.ConnPerS)
	}
}

// roleCollector is a syslog collector that reads and discards a TCP stream.
func roleCollector(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatalf("%v", err)
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			fatalf("%v", err)
		}
		go io.Copy(io.Discard, c)
	}
}

// measureBulk sends mib MiB over one new connection to the sink.
func (tg *target) measureBulk(client string, mib int) error {
	out, err := nettest.Command(tg.pair.Client, client, "role-bulk", tg.sinkAddr, fmt.Sprint(mib)).Output()
	if err != nil {
		return fmt.Errorf("bulk client: %v", err)
	}
	var r struct {
		Bytes   int64   `json:"bytes"`
		Seconds float64 `json:"seconds"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("bulk client output %q: %v", out, err)
	}
	tg.bulkBytes += r.Bytes
	tg.bulkSeconds += r.Seconds
	return nil
}

// reportAccounting compares latch with byte accounting on and off.
func reportAccounting(ms []Measurement, bulk, rounds int) {
	fmt.Printf("bulk throughput over one connection (%d MiB per round, %d rounds), MiB/s:", bulk, rounds)
	for _, m := range ms {
		fmt.Printf(" %s %.0f", m.Scenario, m.BulkMiBs)
	}
	fmt.Println()
	on, off := ms[2], ms[4] // latch, latch-noacct
	fmt.Printf("byte accounting on vs off: connects/s %.0f vs %.0f (%.3fx), median connect %.1f vs %.1f µs",
		on.ConnPerS, off.ConnPerS, on.ConnPerS/off.ConnPerS, on.MedianUS, off.MedianUS)
	if off.BulkMiBs > 0 {
		fmt.Printf(", bulk %.0f vs %.0f MiB/s (%.3fx)", on.BulkMiBs, off.BulkMiBs, on.BulkMiBs/off.BulkMiBs)
	}
	fmt.Println(" (target >= 0.95x)")
}

// roleSink reads every connection to its end.
func roleSink(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatalf("%v", err)
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			fatalf("%v", err)
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			io.Copy(io.Discard, c)
		}()
	}
}

// roleBulk sends mib MiB over one connection to addr, waits for the sink to have
// read it all (it closes when it has), and prints the bytes and seconds.
func roleBulk(addr, mib string) {
	var n int
	fmt.Sscan(mib, &n)
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fatalf("%v", err)
	}
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 1<<20)
	for range n {
		if _, err := c.Write(buf); err != nil {
			fatalf("%v", err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
	c.Close()
	b, _ := json.Marshal(map[string]any{"bytes": int64(n) << 20, "seconds": time.Since(start).Seconds()})
	fmt.Println(string(b))
}

// roleClient connects n times one after another, then n times from conc workers, and
// prints a clientRound.
func roleClient(args []string) {
	addr := args[0]
	var n, conc int
	fmt.Sscan(args[1], &n)
	fmt.Sscan(args[2], &conc)
	var r clientRound
	r.LatencyUS = make([]float64, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			r.Failed++
			continue
		}
		r.LatencyUS = append(r.LatencyUS, us(time.Since(start)))
		c.Close()
	}
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					failed.Add(1)
					continue
				}
				c.Close()
			}
		})
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	r.Failed += int(failed.Load())
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func roleServer(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatalf("%v", err)
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			fatalf("%v", err)
		}
		c.Close()
	}
}

func roleFloor() {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := nfq.AcceptAll(ctx, 4300, func() { fmt.Println("reading") }); err != nil && ctx.Err() == nil {
		fatalf("floor reader: %v", err)
	}
}

func startAndWait(cmd *exec.Cmd, line string) error {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 256)
		k, err := out.Read(buf)
		if err != nil {
			got <- err
			return
		}
		if !strings.Contains(string(buf[:k]), line) {
			got <- fmt.Errorf("printed %q, want %q", buf[:k], line)
			return
		}
		got <- nil
	}()
	select {
	case err := <-got:
		return err
	case <-time.After(15 * time.Second):
		return fmt.Errorf("no %q within 15s", line)
	}
}

func waitAPI(latchBin, api string) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		cli := exec.Command(latchBin, "status")
		cli.Env = append(os.Environ(), "LATCH_API="+api)
		if cli.Run() == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("latch daemon API %s did not answer within 15s", api)
}

func stop(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// atExit is what fatalf undoes before it exits (os.Exit runs no defers): the
// namespaces and processes of the set-ups made so far.
var atExit []func()

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	for i := len(atExit) - 1; i >= 0; i-- {
		atExit[i]()
	}
	os.Exit(1)
}
