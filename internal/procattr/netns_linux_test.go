package procattr

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestNetnsIndexFindsAndRefusesAmbiguous: an address held by one namespace names
// it; one held by two names neither (the sender cannot be told by its address).
func TestNetnsIndexFindsAndRefusesAmbiguous(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	p := os.Getpid() % 100000
	names := []string{fmt.Sprintf("lpx%d-a", p), fmt.Sprintf("lpx%d-b", p)}
	for i, ns := range names {
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		for _, args := range [][]string{
			{"netns", "add", ns},
			{"-n", ns, "link", "set", "lo", "up"},
			{"-n", ns, "addr", "add", fmt.Sprintf("198.19.%d.%d/32", 240, 10+i), "dev", "lo"},
			{"-n", ns, "addr", "add", "198.19.241.1/32", "dev", "lo"}, // in both
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
	}
	x := &netnsIndex{byAddr: map[netip.Addr]netnsEntry{}}
	ns, err := x.find(netip.MustParseAddr("198.19.240.11"))
	if err != nil || ns.Name != names[1] {
		t.Errorf("198.19.240.11: %+v, %v; want %s", ns, err, names[1])
	}
	x.lastScan = time.Time{}
	if ns, err := x.find(netip.MustParseAddr("198.19.241.1")); err == nil {
		t.Errorf("an address two namespaces hold was attributed to %s", ns.Name)
	}
	if _, err := x.find(netip.MustParseAddr("198.19.242.1")); err == nil {
		t.Error("an address no namespace holds was found")
	}
}
