//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// containerNet is a "container" namespace behind the router namespace n.Client, which
// forwards between it and the server namespace n.Server:
//
//	container 198.19.K.2 --veth-- 198.19.K.1 router (latch) 198.18.X.1 --veth-- 198.18.X.2 server
type containerNet struct {
	*Net
	Container   string
	ContainerIP string
}

func newContainerNet(t *testing.T) *containerNet {
	t.Helper()
	n := NewNet(t)
	k := 1 + os.Getpid()%250
	c := &containerNet{Net: n, Container: n.Client + "-ct", ContainerIP: fmt.Sprintf("198.19.%d.2", k)}
	gw := fmt.Sprintf("198.19.%d.1", k)
	vr, vc := fmt.Sprintf("lr%d", os.Getpid()%100000), fmt.Sprintf("lk%d", os.Getpid()%100000)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", c.Container).Run() })
	for _, args := range [][]string{
		{"netns", "add", c.Container},
		{"link", "add", vr, "netns", n.Client, "type", "veth", "peer", "name", vc, "netns", c.Container},
		{"-n", n.Client, "addr", "add", gw + "/24", "dev", vr},
		{"-n", c.Container, "addr", "add", c.ContainerIP + "/24", "dev", vc},
		{"-n", n.Client, "link", "set", vr, "up"},
		{"-n", c.Container, "link", "set", vc, "up"},
		{"-n", c.Container, "link", "set", "lo", "up"},
		{"-n", c.Container, "route", "add", "default", "via", gw},
		{"-n", n.Server, "route", "add", fmt.Sprintf("198.19.%d.0/24", k), "via", n.ClientIP},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := n.Exec(n.Client, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		t.Fatalf("enable forwarding in the router: %v: %s", err, out)
	}
	return c
}

// connectFrom runs e2ehelper connect in the container.
func (c *containerNet) connectFrom(t *testing.T, port int, timeout time.Duration) Result {
	t.Helper()
	out, err := c.Exec(c.Container, helperBin, "connect", fmt.Sprintf("%s:%d", c.ServerIP, port), timeout.String())
	if err != nil {
		t.Fatalf("e2ehelper connect in the container: %v\n%s", err, out)
	}
	var r Result
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		t.Fatalf("e2ehelper output %q: %v", out, err)
	}
	return r
}

// TestForwardedConnectionsHeldAndAttributed: a router namespace runs latch with
// --forward. A program in the container namespace behind it with a rule gets through;
// another connection of it, with no rule, is held and asked; both are attributed to
// the executable and pid in the container and name its namespace, in questions and
// history. Without --forward the same router lets the container through unasked.
func TestForwardedConnectionsHeldAndAttributed(t *testing.T) {
	c := newContainerNet(t)
	c.Serve(t, 8095)
	srv := c.Serve(t, 8096)

	// Without --forward, forwarded traffic is untouched, as before.
	d0 := c.StartDaemon("--default", "deny", "--prompt-timeout", "20s")
	if r := c.connectFrom(t, 8096, 10*time.Second); r.Outcome != "connected" {
		t.Fatalf("without --forward, a forwarded connection: %+v; want connected unasked", r)
	}
	if p := d0.MustCLI(t, "prompts", "--json"); strings.TrimSpace(p) != "" {
		t.Errorf("without --forward, questions: %s", p)
	}
	if err := d0.Signal(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatalf("stop the first daemon: %v", err)
	}

	d := c.StartDaemon("--forward", "--default", "deny", "--prompt-timeout", "30s")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "tcp", "--port", "8095", "--action", "allow")

	r := c.connectFrom(t, 8095, 10*time.Second)
	if r.Outcome != "connected" {
		t.Fatalf("container program with a rule: %+v; want connected", r)
	}
	row := findConn(t, d, 8095, 0)
	if row["verdict"] != "allow" || row["exe"] != helperBin || int(num(row["pid"])) != r.PID || row["netns"] != c.Container {
		t.Errorf("history row %v: want allow by rule, exe %s, pid %d, netns %s", row, helperBin, r.PID, c.Container)
	}
	if row["local_ip"] != c.ContainerIP || row["direction"] != "out" {
		t.Errorf("history row %v: want local_ip %s, direction out", row, c.ContainerIP)
	}

	before := Accepted(srv)
	done := make(chan Result, 1)
	go func() { done <- c.connectFrom(t, 8096, 30*time.Second) }()
	p := waitPrompt(t, d, 8096)
	if p["netns"] != c.Container || p["local_ip"] != c.ContainerIP || num(p["pid"]) <= 0 {
		t.Errorf("question %v: want netns %s, local_ip %s and the pid", p, c.Container, c.ContainerIP)
	}
	time.Sleep(300 * time.Millisecond) // time for a SYN that was let through to arrive
	select {
	case r := <-done:
		t.Fatalf("held forwarded connection finished before the answer: %+v", r)
	default:
	}
	if got := Accepted(srv) - before; got != 0 {
		t.Fatalf("the server accepted %d connections while the forwarded one was held", got)
	}
	d.MustCLI(t, "answer", fmt.Sprint(int64(num(p["id"]))), "allow", "--for", "once")
	select {
	case r := <-done:
		if r.Outcome != "connected" {
			t.Fatalf("answered allow, container client got %+v", r)
		}
		if int(num(p["pid"])) != r.PID {
			t.Errorf("question named pid %v, the client was %d", p["pid"], r.PID)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("answered allow, the held forwarded connection did not go through")
	}
	row = findConn(t, d, 8096, 0)
	if row["reason"] != "prompt" || row["netns"] != c.Container || row["exe"] != helperBin {
		t.Errorf("history row %v: want reason prompt, netns %s, exe %s", row, c.Container, helperBin)
	}
	// A denied forwarded connection is refused at once, like a local one.
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", "8097", "--action", "deny")
	if r := c.connectFrom(t, 8097, 10*time.Second); r.Outcome != "refused" {
		t.Errorf("denied forwarded connection: %+v; want refused", r)
	}
}
