package procattr

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestReview44UserNamespaceOverlayUnhashable: a program a user runs from an
// overlay they mounted in `unshare -Urm` (over layers on a trusted file system:
// whatever its layers, the user chose them) is unhashable, with a note.
func TestReview44UserNamespaceOverlayUnhashable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (unshare)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	merged := filepath.Join(dir, "merged")
	for _, d := range []string{lower, merged, filepath.Join(dir, "empty")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip(err)
	}
	if err := os.WriteFile(filepath.Join(lower, "prog"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	cmd := exec.Command("unshare", "-Urm", "sh", "-c",
		`mount -t overlay overlay -o lowerdir="$0/lower:$0/empty" "$0/merged" && exec "$0/merged/prog" 30`, dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	want := filepath.Join(merged, "prog")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if exe, _ := os.Readlink("/proc/" + itoa(cmd.Process.Pid) + "/exe"); exe == want {
			break
		}
		if time.Now().After(deadline) {
			t.Skip("the program on a user namespace's overlay did not start (overlay in a user namespace refused?)")
		}
	}
	d, err := openProcDir(int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	typ, err := d.exeFS()
	t.Logf("exeFS: %q, %v", typ, err)
	k, err := d.exeHashKey()
	if err != nil {
		t.Fatal(err)
	}
	if n := hashes.note(k); n == "" || !strings.Contains(typ, "user namespace") {
		t.Errorf("a program on an overlay a user mounted in a user namespace: type %q, note %q; want unhashable, named as in a user namespace", typ, n)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
