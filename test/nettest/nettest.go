// Package nettest makes the throwaway networks latch's end-to-end tests and benchmarks
// run in: two network namespaces joined by a veth pair, addressed from 198.18.0.0/15
// (reserved for benchmarking), removed again by Close.
package nettest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
)

var counter atomic.Int32

// Pair is two namespaces, Client and Server, joined by a veth pair.
type Pair struct {
	Client, Server     string // namespace names
	ClientIP, ServerIP string
}

// NewPair creates the namespaces. The caller must Close the pair.
func NewPair() (*Pair, error) {
	n := counter.Add(1)
	id := fmt.Sprintf("%d-%d", os.Getpid()%100000, n)
	subnet := 1 + (os.Getpid()+int(n))%250
	p := &Pair{
		Client:   "latch-c" + id,
		Server:   "latch-s" + id,
		ClientIP: fmt.Sprintf("198.18.%d.1", subnet),
		ServerIP: fmt.Sprintf("198.18.%d.2", subnet),
	}
	vc, vs := "lc"+id, "ls"+id
	for _, args := range [][]string{
		{"netns", "add", p.Client},
		{"netns", "add", p.Server},
		{"link", "add", vc, "netns", p.Client, "type", "veth", "peer", "name", vs, "netns", p.Server},
		{"-n", p.Client, "addr", "add", p.ClientIP + "/24", "dev", vc},
		{"-n", p.Server, "addr", "add", p.ServerIP + "/24", "dev", vs},
		{"-n", p.Client, "link", "set", vc, "up"},
		{"-n", p.Server, "link", "set", vs, "up"},
		{"-n", p.Client, "link", "set", "lo", "up"},
		{"-n", p.Server, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			p.Close()
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return p, nil
}

// Close removes both namespaces (and with them the veth pair).
func (p *Pair) Close() {
	exec.Command("ip", "netns", "del", p.Client).Run()
	exec.Command("ip", "netns", "del", p.Server).Run()
}

// Command returns a command that runs name in namespace ns.
func Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}
