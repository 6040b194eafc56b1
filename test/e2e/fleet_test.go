//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/events/schemacheck"
)

// nsHTTP returns an HTTP client whose connections are made inside network namespace
// ns (so the test reaches loopback services there).
func nsHTTP(ns string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			// The thread enters the namespace and is never unlocked: Go ends it with
			// the goroutine, so no other goroutine runs in the namespace.
			runtime.LockOSThread()
			f, err := os.Open("/var/run/netns/" + ns)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, fmt.Errorf("setns %s: %w", ns, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// promQuery asks Prometheus (in the client namespace) for an instant vector and
// returns the value of its single sample, or false when there is none.
func promQuery(t *testing.T, hc *http.Client, promAddr, q string) (float64, bool) {
	t.Helper()
	resp, err := hc.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" || len(body.Data.Result) != 1 {
		return 0, false
	}
	s, _ := body.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// promWait polls Prometheus until query q has value want (the scrape interval is 1s).
func promWait(t *testing.T, hc *http.Client, promAddr, q string, want float64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got float64
	var ok bool
	for time.Now().Before(deadline) {
		if got, ok = promQuery(t, hc, promAddr, q); ok && got == want {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Errorf("Prometheus: %s = %v (present %v), want %v", q, got, ok, want)
}

// TestMetricsScrapedByPrometheus runs a real Prometheus next to the daemon, makes a
// known number of allowed, denied and asked connections and reads the counters back
// through Prometheus's HTTP API; `promtool check metrics` must find nothing to say.
func TestMetricsScrapedByPrometheus(t *testing.T) {
	for _, tool := range []string{"prometheus", "promtool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (Debian package prometheus; test.sh installs it): %v", tool, err)
		}
	}
	n := NewNet(t)
	n.Serve(t, 8080)
	n.Serve(t, 8081)
	n.Serve(t, 8082)
	const metricsAddr, promAddr = "127.0.0.1:9184", "127.0.0.1:9090"
	n.Serve(t, 8083)
	// Every connection through the queue: the counts below are per queued verdict
	// (the fast path's own decisions are counted as reason fast-path; see
	// internal/fastpath and TestFastPathDecidesRuledConnections).
	d := n.StartDaemon("--default", "deny", "--prompt-timeout", "3s", "--metrics", metricsAddr, "--fast-path=false")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8080", "--action", "allow")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8081", "--action", "deny")

	dir := t.TempDir()
	conf := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(conf, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: latch
    static_configs:
      - targets: ['%s']
`, metricsAddr)), 0o644)
	prom := n.Start(n.Client, "prometheus", "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr)
	t.Cleanup(func() {
		prom.Signal(syscall.SIGTERM, 10*time.Second)
		if t.Failed() {
			t.Logf("prometheus output:\n%s", prom.Output())
		}
	})
	hc := nsHTTP(n.Client)
	promWait(t, hc, promAddr, `up{job="latch"}`, 1)

	const allowed, denied = 5, 3
	for range allowed {
		if r := n.Connect(t, 8080, 10*time.Second); r.Outcome != "connected" {
			t.Fatalf("allowed connect: %+v", r)
		}
	}
	for range denied {
		if r := n.Connect(t, 8081, 10*time.Second); r.Outcome != "refused" {
			t.Fatalf("denied connect: %+v", r)
		}
	}
	// One question, answered by a person.
	done := make(chan Result, 1)
	go func() { done <- n.Connect(t, 8082, 15*time.Second) }()
	p := waitPrompt(t, d, 8082)
	d.MustCLI(t, "answer", strconv.Itoa(int(num(p["id"]))), "allow", "--for", "once")
	if r := <-done; r.Outcome != "connected" {
		t.Fatalf("answered connect: %+v", r)
	}
	// One question nobody answers: the default (deny) after 3s.
	if r := n.Connect(t, 8083, 15*time.Second); r.Outcome != "refused" {
		t.Fatalf("unanswered connect: %+v", r)
	}

	for q, want := range map[string]float64{
		`latch_decisions_total{action="allow",reason="rule"}`:   allowed,
		`latch_decisions_total{action="deny",reason="rule"}`:    denied,
		`latch_decisions_total{action="allow",reason="prompt"}`: 1,
		`latch_decisions_total{action="deny",reason="timeout"}`: 1,
		`sum(latch_decisions_total)`:                            allowed + denied + 2,
		`latch_verdict_latency_seconds_count`:                   allowed + denied + 2,
		`latch_questions_opened_total`:                          2,
		`latch_questions_closed_total{outcome="answered"}`:      1,
		`latch_questions_closed_total{outcome="timeout"}`:       1,
		`latch_questions_open`:                                  0,
		`latch_rules`:                                           2,
		`latch_kernel_verdicts_total{action="allow"}`:           allowed + 1,
		`latch_history_rows_written_total`:                      allowed + denied + 2,
		`latch_history_rows`:                                    allowed + denied + 2,
		`latch_queue_overflows_total`:                           0,
		`count(latch_build_info{version!=""})`:                  1,
		// The timed-out connection was held 3s, the others far less.
		`latch_verdict_latency_seconds_bucket{le="2.5"}`: allowed + denied + 1,
		`latch_verdict_latency_seconds_bucket{le="5"}`:   allowed + denied + 2,
	} {
		promWait(t, hc, promAddr, q, want)
	}
	if v, ok := promQuery(t, hc, promAddr, `sum(latch_attributions_total)`); !ok || v < allowed+denied+2 {
		t.Errorf("attributions: %v %v; want every connection attributed", v, ok)
	}

	// promtool finds nothing wrong with the exposition.
	resp, err := hc.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = bytes.NewReader(text)
	if out, err := check.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	// Metrics are served on loopback only: not on the veth address.
	if _, err := hc.Get("http://" + n.ClientIP + ":9184/metrics"); err == nil {
		t.Error("metrics answered on the network address; want loopback only")
	}
}

// rsyslog runs a real rsyslogd in namespace ns, receiving RFC 5424 over TCP on
// 127.0.0.1:port and writing "MSGID MSG" lines to out.
type rsyslog struct {
	n         *Net
	conf, out string
	port      int
	proc      *Proc
}

func startRsyslog(t *testing.T, n *Net, port int) *rsyslog {
	t.Helper()
	if _, err := exec.LookPath("rsyslogd"); err != nil {
		t.Fatalf("rsyslogd not installed (Debian package rsyslog; test.sh installs it): %v", err)
	}
	dir := t.TempDir()
	r := &rsyslog{n: n, port: port, conf: filepath.Join(dir, "rsyslog.conf"), out: filepath.Join(dir, "received.log")}
	os.MkdirAll(filepath.Join(dir, "work"), 0o755)
	os.WriteFile(r.conf, []byte(fmt.Sprintf(`global(workDirectory="%s" maxMessageSize="64k")
module(load="imtcp")
template(name="raw" type="string" string="%%msgid%% %%msg%%\n")
ruleset(name="latch") {
	action(type="omfile" file="%s" template="raw")
}
input(type="imtcp" address="127.0.0.1" port="%d" ruleset="latch")
`, filepath.Join(dir, "work"), r.out, port)), 0o644)
	r.start(t)
	return r
}

func (r *rsyslog) start(t *testing.T) {
	t.Helper()
	pid := filepath.Join(filepath.Dir(r.conf), "rsyslogd.pid")
	os.Remove(pid)
	r.proc = r.n.Start(r.n.Client, "rsyslogd", "-n", "-f", r.conf, "-i", pid)
	// Ready when it accepts on its port.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := r.n.Exec(r.n.Client, "ss", "-Hltn", fmt.Sprintf("sport = :%d", r.port))
		if strings.Contains(out, "LISTEN") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rsyslogd does not listen; output:\n%s", r.proc.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *rsyslog) stop(t *testing.T) {
	t.Helper()
	if err := r.proc.Signal(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Logf("rsyslogd stop: %v", err)
	}
}

// received parses what rsyslog wrote: the event documents by MSGID.
func (r *rsyslog) received(t *testing.T) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(r.out)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		msgid, doc, ok := strings.Cut(line, " ")
		if !ok {
			t.Fatalf("rsyslog line without MSGID: %q", line)
		}
		doc = strings.TrimSpace(doc)
		var m map[string]any
		if err := json.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("rsyslog line is not an event: %q: %v", line, err)
		}
		if m["event"] != msgid {
			t.Fatalf("MSGID %q for event %v", msgid, m["event"])
		}
		m["_raw"] = doc
		out = append(out, m)
	}
	return out
}

// decidedIDs returns the connection ids of connection.decided events, failing on a
// duplicate.
func decidedIDs(t *testing.T, evs []map[string]any) map[float64]map[string]any {
	t.Helper()
	ids := map[float64]map[string]any{}
	for _, e := range evs {
		if e["event"] != "connection.decided" {
			continue
		}
		id := num(e["connection"].(map[string]any)["id"])
		if ids[id] != nil {
			t.Fatalf("connection %v decided twice in the stream:\n%v\n%v", id, ids[id]["_raw"], e["_raw"])
		}
		ids[id] = e
	}
	return ids
}

func syslogStats(t *testing.T, d *Daemon) (sent, dropped float64) {
	t.Helper()
	var st map[string]any
	if err := json.Unmarshal([]byte(d.MustCLI(t, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	evs, _ := st["events"].([]any)
	for _, e := range evs {
		m := e.(map[string]any)
		if m["sink"] == "syslog" {
			return num(m["sent"]), num(m["dropped"])
		}
	}
	t.Fatalf("status has no syslog sink: %v", st["events"])
	return 0, 0
}

// TestEventsToRsyslog sends the event stream to a real rsyslog: every decision arrives
// exactly once, as a valid latch.event/1 document with the connection's fields. Then
// rsyslog is stopped in the middle of a flood: latch keeps deciding every connection,
// counts what it cannot send, and reconnects once rsyslog is back.
func TestEventsToRsyslog(t *testing.T) {
	v, err := schemacheck.New(schemacheck.SchemaPath())
	if err != nil {
		t.Fatal(err)
	}
	n := NewNet(t)
	n.Serve(t, 8080)
	rs := startRsyslog(t, n, 5514)
	t.Cleanup(func() { rs.proc.Kill() })
	evFile := filepath.Join(t.TempDir(), "events.jsonl")
	d := n.StartDaemon("--default", "deny", "--events-syslog", "tcp://127.0.0.1:5514", "--events-file", evFile, "--host-id", "e2e-host",
		"--fast-path=false") // the rate comparison below is of queued decisions

	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8080", "--action", "allow")

	flood := func(count int) FloodResultE2E {
		out, err := n.Exec(n.Client, helperBin, "flood", fmt.Sprintf("%s:8080", n.ServerIP), strconv.Itoa(count), "8", "5s")
		if err != nil {
			t.Fatalf("flood: %v\n%s", err, out)
		}
		var fr FloodResultE2E
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &fr); err != nil {
			t.Fatalf("flood output %q: %v", out, err)
		}
		return fr
	}

	// Phase 1: rsyslog up the whole time.
	const first = 500
	fr := flood(first)
	if fr.Connected != first {
		t.Fatalf("flood: %+v; want all %d connected", fr, first)
	}
	deadline := time.Now().Add(20 * time.Second)
	var got map[float64]map[string]any
	for {
		got = decidedIDs(t, rs.received(t))
		if len(got) >= first || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(got) != first {
		t.Fatalf("rsyslog got %d connection.decided events, want %d", len(got), first)
	}
	for _, e := range got {
		if err := v.Validate([]byte(e["_raw"].(string))); err != nil {
			t.Fatal(err)
		}
		c, p, dec := e["connection"].(map[string]any), e["process"].(map[string]any), e["decision"].(map[string]any)
		if e["host_id"] != "e2e-host" || c["remote_ip"] != n.ServerIP || num(c["remote_port"]) != 8080 || c["protocol"] != "tcp" ||
			c["direction"] != "out" || p["executable"] != helperBin || num(p["pid"]) <= 0 || dec["action"] != "allow" || dec["reason"] != "rule" || num(dec["rule_id"]) != 1 {
			t.Fatalf("event lacks the connection's fields: %s", e["_raw"])
		}
	}
	_, dropped := syslogStats(t, d)
	if dropped != 0 {
		t.Fatalf("%v events dropped with rsyslog up", dropped)
	}
	rate1 := float64(fr.Connected) / fr.Seconds

	// Phase 2: rsyslog stops in the middle of a flood, and comes back.
	const second = 3000
	floodDone := make(chan FloodResultE2E, 1)
	go func() { floodDone <- flood(second) }()
	time.Sleep(300 * time.Millisecond)
	rs.stop(t)
	before := len(decidedIDs(t, rs.received(t)))
	fr2 := <-floodDone
	if fr2.Connected != second || fr2.Timeout != 0 {
		t.Fatalf("flood with rsyslog stopped: %+v; want every connection decided and connected", fr2)
	}
	rate2 := float64(fr2.Connected) / fr2.Seconds
	t.Logf("connections/s: %.0f with rsyslog up, %.0f while it was stopped", rate1, rate2)
	if _, dropped := syslogStats(t, d); dropped == 0 {
		// A fast machine can finish the flood before rsyslog is gone: decide more
		// connections while it certainly is.
		if fr3 := flood(1000); fr3.Connected != 1000 {
			t.Fatalf("flood with rsyslog stopped: %+v; want every connection decided and connected", fr3)
		}
		if _, dropped := syslogStats(t, d); dropped == 0 {
			t.Fatal("rsyslog was down during a flood, but no event was counted as dropped")
		}
	}
	rs.start(t)
	// After the backoff, new decisions reach rsyslog again.
	deadline = time.Now().Add(30 * time.Second)
	for {
		if r := n.Connect(t, 8080, 5*time.Second); r.Outcome != "connected" {
			t.Fatalf("connect after rsyslog restart: %+v", r)
		}
		if len(decidedIDs(t, rs.received(t))) > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("latch did not reconnect to rsyslog within 30s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	sent, dropped := syslogStats(t, d)
	t.Logf("syslog sink: %v sent, %v dropped; rsyslog received %d decisions", sent, dropped, len(decidedIDs(t, rs.received(t))))

	// The file sink saw everything, each event valid, no decision twice.
	d.Signal(syscall.SIGTERM, 15*time.Second)
	data, err := os.ReadFile(evFile)
	if err != nil {
		t.Fatal(err)
	}
	var fileEvs []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		if err := v.Validate(line); err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(line, &m)
		m["_raw"] = string(line)
		fileEvs = append(fileEvs, m)
	}
	if ids := decidedIDs(t, fileEvs); len(ids) < first+second {
		t.Errorf("events file holds %d decisions, want at least %d", len(ids), first+second)
	}
	if fileEvs[0]["event"] != "daemon.started" || fileEvs[len(fileEvs)-1]["event"] != "daemon.stopped" {
		t.Errorf("events file starts with %v and ends with %v", fileEvs[0]["event"], fileEvs[len(fileEvs)-1]["event"])
	}
}

// FloodResultE2E is e2ehelper's flood output.
type FloodResultE2E struct {
	Attempts  int     `json:"attempts"`
	Connected int64   `json:"connected"`
	Refused   int64   `json:"refused"`
	Timeout   int64   `json:"timeout"`
	Other     int64   `json:"other"`
	Seconds   float64 `json:"seconds"`
}

// TestExplainHitsAndEventStream: real connections are explained from the history,
// counted for the rules that decided them (across a daemon restart), and streamed to
// `latch events --follow --json` as valid latch.event/1 documents.
func TestExplainHitsAndEventStream(t *testing.T) {
	v, err := schemacheck.New(schemacheck.SchemaPath())
	if err != nil {
		t.Fatal(err)
	}
	n := NewNet(t)
	n.Serve(t, 8080)
	n.Serve(t, 8081)
	dir := t.TempDir()
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "latch.sock")
	d := n.startDaemonAt(t, state, sock, "--default", "deny")

	follow := exec.Command(latchBin, "events", "--follow", "--json")
	follow.Env = append(os.Environ(), "LATCH_API="+sock)
	stdout, _ := follow.StdoutPipe()
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follow.Process.Kill(); follow.Wait() })
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	time.Sleep(300 * time.Millisecond) // subscribed before the first rule

	d.MustCLI(t, "rules", "add", "--app", helperBin, "--remote", n.ServerIP, "--port", "8080", "--action", "allow")                                            // 1
	d.MustCLI(t, "rules", "add", "--port", "8081", "--action", "deny")                                                                                         // 2
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--remote", netip.PrefixFrom(netip.MustParseAddr(n.ServerIP), 24).Masked().String(), "--action", "allow") // 3
	for range 2 {
		if r := n.Connect(t, 8080, 10*time.Second); r.Outcome != "connected" {
			t.Fatalf("port 8080: %+v", r)
		}
	}
	r := n.Connect(t, 8081, 10*time.Second)
	if r.Outcome != "connected" {
		t.Fatalf("port 8081 (rule 3 for the app beats rule 2 for any app): %+v", r)
	}

	// The stream: three rules added, three decisions, all valid.
	want := map[string]int{"rule.added": 3, "connection.decided": 3}
	got := map[string]int{}
	deadline := time.After(15 * time.Second)
	for got["rule.added"] < 3 || got["connection.decided"] < 3 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("event stream ended; got %v", got)
			}
			if err := v.Validate([]byte(l)); err != nil {
				t.Fatal(err)
			}
			var e map[string]any
			json.Unmarshal([]byte(l), &e)
			got[e["event"].(string)]++
		case <-deadline:
			t.Fatalf("events seen %v, want %v", got, want)
		}
	}

	// Explain the past connection: rule 3 now, beating rule 2 at the app step.
	c := findConn(t, d, 8081, r.PID)
	var ex map[string]any
	if err := json.Unmarshal([]byte(d.MustCLI(t, "explain", "--conn", strconv.Itoa(int(num(c["id"]))), "--json")), &ex); err != nil {
		t.Fatal(err)
	}
	losers, _ := ex["losers"].([]any)
	if num(ex["rule_id"]) != 3 || ex["step"] != "app" || len(losers) != 1 ||
		num(losers[0].(map[string]any)["rule"].(map[string]any)["id"]) != 2 || losers[0].(map[string]any)["step"] != "app" {
		t.Fatalf("explain --conn: %v; want rule 3 winning over rule 2 at app", ex)
	}
	text := d.MustCLI(t, "explain", "--app", helperBin, "--remote", n.ServerIP, "--port", "8080")
	if !strings.Contains(text, "allow by rule 1") || !strings.Contains(text, "it wins at step 3, remote") || !strings.Contains(text, "rule 3: allow") {
		t.Errorf("explain:\n%s", text)
	}

	hits := func(d *Daemon) map[float64]float64 {
		out := map[float64]float64{}
		for _, r := range JSONLines(t, d.MustCLI(t, "rules", "list", "--json")) {
			out[num(r["id"])] = num(r["hits"])
		}
		return out
	}
	wantHits := map[float64]float64{1: 2, 2: 0, 3: 1}
	if h := hits(d); fmt.Sprint(h) != fmt.Sprint(wantHits) {
		t.Fatalf("rule hits %v, want %v", h, wantHits)
	}
	// Saved on a clean stop, back after a restart.
	if err := d.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	d = n.startDaemonAt(t, state, sock, "--default", "deny")
	if h := hits(d); fmt.Sprint(h) != fmt.Sprint(wantHits) {
		t.Fatalf("rule hits after a restart %v, want %v", h, wantHits)
	}
	if r := n.Connect(t, 8080, 10*time.Second); r.Outcome != "connected" {
		t.Fatal(r)
	}
	wantHits[1] = 3
	if h := hits(d); fmt.Sprint(h) != fmt.Sprint(wantHits) {
		t.Fatalf("rule hits after one more %v, want %v", h, wantHits)
	}
}
