package containername

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestUserStateMemoryIsBounded: a user's own state files are the user's to write.
// One user filling the 16 podman files latch reads for their containers (graph
// root and run root, four drivers, containers.json and volatile-containers.json)
// with as many entries as fit must not make the daemon keep hundreds of MiB of
// names: one lookup of one of their labels used to keep every entry of every file
// (about 70 MiB for 16 files of 2 MiB, 350 MiB for 16 files of 16 MiB). At most MaxUserNames names are kept per
// file of a user's, and the user's real containers (the first entries) are named.
func TestUserStateMemoryIsBounded(t *testing.T) {
	f := newTree(t)
	var b strings.Builder
	b.WriteString("[")
	first := strings.Repeat("ab", 32)
	fmt.Fprintf(&b, `{"id":%q,"names":["mine"]}`, first)
	for i := 0; b.Len() < MaxUserFileSize-200; i++ {
		fmt.Fprintf(&b, `,{"id":"%064x","names":["%d"]}`, i, i)
	}
	b.WriteString("]")
	// One file, hard-linked at every path latch reads (each path is a file of its
	// own to latch), so the test writes one file, not 16.
	f.write("home/u1000/.local/share/containers/storage/overlay-containers/containers.json", b.String(), 1000, 0o600)
	src := filepath.Join(f.root, "home/u1000/.local/share/containers/storage/overlay-containers/containers.json")
	n := 0
	for _, base := range []string{"home/u1000/.local/share/containers/storage", "run/user/1000/containers"} {
		for _, d := range podmanDrivers {
			for _, name := range []string{"containers.json", "volatile-containers.json"} {
				p := filepath.Join(f.root, base, d+"-containers", name)
				n++
				if p == src {
					continue
				}
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Link(src, p); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if n != 16 {
		t.Fatalf("%d paths, want 16", n)
	}
	r := f.reader()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if got := r.Name("podman@1000:" + strings.Repeat("f", 64)); got != "" {
		t.Errorf("a container in no file: %q", got)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	kept := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap kept after one lookup of a user's label: %.1f MiB", float64(kept)/(1<<20))
	if kept > 16<<20 {
		t.Errorf("one user's state files keep %.1f MiB of the daemon's heap, want at most 16 MiB", float64(kept)/(1<<20))
	}
	r.mu.Lock()
	for p, sf := range r.files {
		if len(sf.names) > MaxUserNames {
			t.Errorf("%s: %d names kept, want at most %d", p, len(sf.names), MaxUserNames)
		}
	}
	r.mu.Unlock()
	if got := r.Name("podman@1000:" + first); got != "mine" {
		t.Errorf("the user's first container: %q, want mine", got)
	}
	runtime.KeepAlive(r)
}

// TestUserStateFileSizeIsBounded: a user's own state file larger than
// MaxUserFileSize is not read (each version the user writes would be read and
// parsed again, up to 16 files per user); root's runtime's may be up to MaxFileSize.
func TestUserStateFileSizeIsBounded(t *testing.T) {
	f := newTree(t)
	pad := strings.Repeat(" ", MaxUserFileSize)
	f.write("home/u1000/.local/share/containers/storage/overlay-containers/containers.json", podmanContainers(idB, "mine")+pad, 1000, 0o600)
	f.write(podmanDir+"/containers.json", podmanContainers(idC, "system-db")+pad, 0, 0o600)
	r := f.reader()
	if got := r.Name("podman@1000:" + idB); got != "" {
		t.Errorf("a user's state file of more than %d bytes was read: name %q", MaxUserFileSize, got)
	}
	if got := r.Name("podman:" + idC); got != "system-db" {
		t.Errorf("root's state file of %d bytes: name %q, want system-db", MaxUserFileSize+100, got)
	}
}
