// Package lifetime ends rules whose life is bound to something other than a time: a
// process (Rule.ExitPID: the rule is removed when that process exits, learnt from a
// pidfd becoming readable, no polling) and a boot (Rule.BootID: a rule of another
// boot is dropped when the daemon starts).
package lifetime

import (
	"fmt"
	"os"
	"strings"

	"github.com/latchfw/latch/internal/engine"
)

// bootIDPath holds the kernel's random id of this boot.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// BootID returns this boot's id (Linux); an error elsewhere.
func BootID() (string, error) {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return "", fmt.Errorf("reading this boot's id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// DropOtherBoots returns rules without those bound to a boot other than boot, and
// how many it dropped.
func DropOtherBoots(rules []engine.Rule, boot string) ([]engine.Rule, int) {
	out := rules[:0]
	n := 0
	for _, r := range rules {
		if r.BootID != "" && r.BootID != boot {
			n++
			continue
		}
		out = append(out, r)
	}
	return out, n
}
