package containername

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	idA = strings.Repeat("a1b2c3d4e5f60718", 4)
	idB = strings.Repeat("9f8e7d6c5b4a3021", 4)
	idC = strings.Repeat("0123456789abcdef", 4)
)

// fakeTree is a file system root holding runtime state, with a clock and a log.
type fakeTree struct {
	t    *testing.T
	root string
	now  time.Time
	mu   sync.Mutex
	logs []string
}

func newTree(t *testing.T) *fakeTree {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the fake state files are owned by root and by other users")
	}
	root := t.TempDir()
	os.Chmod(root, 0o755)
	return &fakeTree{t: t, root: root, now: time.Unix(1_700_000_000, 0)}
}

func (f *fakeTree) reader() *Reader {
	return New(Options{Root: f.root, Now: func() time.Time { return f.now },
		Home: func(uid uint32) (string, error) { return fmt.Sprintf("/home/u%d", uid), nil },
		Logf: func(format string, args ...any) {
			f.mu.Lock()
			f.logs = append(f.logs, fmt.Sprintf(format, args...))
			f.mu.Unlock()
		}})
}

// write writes rel (below the root) with mode, creating its directories (mode 0755,
// owned by uid) and chowning the file to uid.
func (f *fakeTree) write(rel, data string, uid int, mode os.FileMode) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	var made []string
	for d := filepath.Dir(p); d != f.root; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		made = append(made, d)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	for _, d := range made {
		os.Chmod(d, 0o755)
		// Directories of a user's home are the user's; the rest root's.
		if uid != 0 && strings.HasPrefix(d, filepath.Join(f.root, "home")+"/") {
			os.Chown(d, uid, uid)
		}
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), mode); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Chown(tmp, uid, uid); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil { // as the runtimes write: a new file
		f.t.Fatal(err)
	}
}

func dockerConfig(id, name string) string {
	return fmt.Sprintf(`{"StreamConfig":{},"State":{"Running":true,"Pid":4242},"ID":%s,"Created":"2026-01-02T03:04:05Z","Name":%s,"Config":{"Hostname":"a1b2c3d4e5f6","Image":"nginx"}}`, jsonString(id), jsonString(name))
}

func podmanContainers(pairs ...string) string {
	var b strings.Builder
	b.WriteString("[")
	for i := 0; i < len(pairs); i += 2 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"id":%s,"names":[%s,"alias"],"image":"f00d","layer":"beef","metadata":"{}","created":"2026-01-02T03:04:05Z","flags":{"MountLabel":""}}`, jsonString(pairs[i]), jsonString(pairs[i+1]))
	}
	b.WriteString("]")
	return b.String()
}

const (
	dockerDir = "var/lib/docker/containers"
	podmanDir = "var/lib/containers/storage/overlay-containers"
)

func TestNamesFromRuntimeState(t *testing.T) {
	f := newTree(t)
	hostile := "web\x1b[2K\rfirefox\u202e"
	f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1"), 0, 0o600)
	f.write(podmanDir+"/containers.json", podmanContainers(idB, "db-1", idC, hostile), 0, 0o600)
	r := f.reader()
	for label, want := range map[string]string{
		"docker:" + idA:   "web-1",
		"podman:" + idB:   "db-1",
		"podman:" + idC:   hostile, // exact bytes: escaping is the text output's job
		"docker:" + idB:   "",      // podman's container is not docker's
		"podman:" + idA:   "",
		"lxc:web":         "",
		"docker:a1b2":     "",
		"docker@0:" + idA: "",
	} {
		if got := r.Name(label); got != want {
			t.Errorf("Name(%q) = %q, want %q", label, got, want)
		}
	}
	if len(f.logs) != 0 {
		t.Errorf("logged %q for good files", f.logs)
	}
}

// TestPodmanVolatileAndTransient: podman keeps `run --rm` containers in
// volatile-containers.json, and a transient store's under the run root: both name.
func TestPodmanVolatileAndTransient(t *testing.T) {
	f := newTree(t)
	f.write(podmanDir+"/volatile-containers.json", podmanContainers(idB, "temp-1"), 0, 0o600)
	f.write("run/containers/storage/vfs-containers/containers.json", podmanContainers(idC, "transient-1"), 0, 0o600)
	f.write("run/user/1000/containers/overlay-containers/volatile-containers.json", podmanContainers(idA, "mine-rm"), 1000, 0o600)
	os.Chown(filepath.Join(f.root, "run/user/1000"), 1000, 1000)
	r := f.reader()
	for label, want := range map[string]string{
		"podman:" + idB:      "temp-1",
		"podman:" + idC:      "transient-1",
		"podman@1000:" + idA: "mine-rm",
		"podman:" + idA:      "",
	} {
		if got := r.Name(label); got != want {
			t.Errorf("Name(%q) = %q, want %q", label, got, want)
		}
	}
}

// TestUntrustedFilesGiveNoName: a state file (or a directory on its way) that another
// user owns or may write, a symbolic link, a FIFO, or a file that is not the
// runtime's JSON gives no name; each is logged once, not at every lookup.
func TestUntrustedFilesGiveNoName(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(f *fakeTree)
		logs  bool
	}{
		{"owned by a user", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1"), 1000, 0o600)
		}, true},
		{"group-writable", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1"), 0, 0o620)
		}, true},
		{"world-writable", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1"), 0, 0o606)
		}, true},
		{"world-writable directory", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1"), 0, 0o600)
			os.Chmod(filepath.Join(f.root, dockerDir), 0o1777)
		}, false},
		{"directory owned by a user", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1"), 0, 0o600)
			os.Chown(filepath.Join(f.root, dockerDir, idA), 1000, 1000)
		}, false},
		{"symbolic link", func(f *fakeTree) {
			f.write("srv/real.json", dockerConfig(idA, "/web-1"), 0, 0o600)
			os.MkdirAll(filepath.Join(f.root, dockerDir, idA), 0o700)
			os.Symlink(filepath.Join(f.root, "srv/real.json"), filepath.Join(f.root, dockerDir, idA, "config.v2.json"))
		}, false},
		{"symbolic link on the way", func(f *fakeTree) {
			f.write("srv/docker/containers/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1"), 0, 0o600)
			os.MkdirAll(filepath.Join(f.root, "var/lib"), 0o755)
			os.Symlink(filepath.Join(f.root, "srv/docker"), filepath.Join(f.root, "var/lib/docker"))
		}, false},
		{"fifo", func(f *fakeTree) {
			os.MkdirAll(filepath.Join(f.root, dockerDir, idA), 0o700)
			if err := mkfifo(filepath.Join(f.root, dockerDir, idA, "config.v2.json")); err != nil {
				f.t.Fatal(err)
			}
		}, true},
		{"garbage", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", "\x00\xff{not json", 0, 0o600)
		}, true},
		{"truncated", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1")[:40], 0, 0o600)
		}, true},
		{"another container's config", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idB, "/web-1"), 0, 0o600)
		}, false},
		{"no name", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", `{"ID":"`+idA+`"}`, 0, 0o600)
		}, true},
		{"name too long", func(f *fakeTree) {
			f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/"+strings.Repeat("n", MaxNameLen+1)), 0, 0o600)
		}, false},
		{"no runtime", func(f *fakeTree) {}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newTree(t)
			tc.setup(f)
			r := f.reader()
			for i := 0; i < 5; i++ {
				if got := r.Name("docker:" + idA); got != "" {
					t.Fatalf("lookup %d: Name = %q, want none", i, got)
				}
				f.now = f.now.Add(2 * time.Second) // due for a check each time
			}
			switch {
			case tc.logs && len(f.logs) != 1:
				t.Errorf("logged %d lines, want 1 for the one version of the file: %q", len(f.logs), f.logs)
			case !tc.logs && len(f.logs) != 0:
				t.Errorf("logged %q, want nothing", f.logs)
			}
		})
	}
}

// TestPodmanGarbageAndRefusals: containers.json that is not an array, or that a user
// owns, gives no podman names.
func TestPodmanGarbageAndRefusals(t *testing.T) {
	for name, write := range map[string]func(f *fakeTree){
		"object": func(f *fakeTree) {
			f.write(podmanDir+"/containers.json", `{"id":"`+idB+`","names":["db-1"]}`, 0, 0o600)
		},
		"owned by user": func(f *fakeTree) { f.write(podmanDir+"/containers.json", podmanContainers(idB, "db-1"), 1000, 0o600) },
		"other-writable": func(f *fakeTree) {
			f.write(podmanDir+"/containers.json", podmanContainers(idB, "db-1"), 0, 0o666)
		},
		"bad id": func(f *fakeTree) {
			f.write(podmanDir+"/containers.json", podmanContainers("../"+idB, "db-1"), 0, 0o600)
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newTree(t)
			write(f)
			if got := f.reader().Name("podman:" + idB); got != "" {
				t.Errorf("Name = %q, want none", got)
			}
		})
	}
}

// TestRootlessNamesAreTheUsers: a user's own container ("podman@UID:ID") is named from
// that user's storage, owned by the user; root's runtime is never asked for it, nor
// the user's storage for a system container, nor another user's files.
func TestRootlessNamesAreTheUsers(t *testing.T) {
	f := newTree(t)
	f.write("home/u1000/.local/share/containers/storage/overlay-containers/containers.json", podmanContainers(idB, "mine"), 1000, 0o600)
	f.write("home/u1000/.local/share/docker/containers/"+idA+"/config.v2.json", dockerConfig(idA, "/dmine"), 1000, 0o600)
	f.write(podmanDir+"/containers.json", podmanContainers(idC, "system-db"), 0, 0o600)
	// User 1001's home holds a file owned by user 1000: not 1001's claim.
	f.write("home/u1001/.local/share/containers/storage/overlay-containers/containers.json", podmanContainers(idB, "planted"), 1000, 0o600)
	os.Chown(filepath.Join(f.root, "home/u1001"), 1001, 1001)
	r := f.reader()
	for label, want := range map[string]string{
		"podman@1000:" + idB: "mine",
		"docker@1000:" + idA: "dmine",
		"podman:" + idB:      "", // root's runtime does not know the user's container
		"podman@1000:" + idC: "", // nor the user's storage root's
		"podman@1001:" + idB: "",
	} {
		if got := r.Name(label); got != want {
			t.Errorf("Name(%q) = %q, want %q", label, got, want)
		}
	}
	if len(f.logs) != 0 {
		t.Errorf("a user's files are never logged about: %q", f.logs)
	}
}

// TestNamesRefreshWhenTheFileChanges: a rename shows after the next check (at most
// Interval later); between checks no file is looked at (the state directory can be
// gone and the cached name still answers).
func TestNamesRefreshWhenTheFileChanges(t *testing.T) {
	f := newTree(t)
	f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1"), 0, 0o600)
	f.write(podmanDir+"/containers.json", podmanContainers(idB, "db-1"), 0, 0o600)
	r := f.reader()
	if r.Name("docker:"+idA) != "web-1" || r.Name("podman:"+idB) != "db-1" {
		t.Fatal("no names to start with")
	}
	f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-2"), 0, 0o600)
	f.write(podmanDir+"/containers.json", podmanContainers(idB, "db-2", idC, "cache"), 0, 0o600)
	f.now = f.now.Add(DefaultInterval / 2)
	if got := r.Name("docker:" + idA); got != "web-1" {
		t.Errorf("before the next check: %q, want the cached web-1", got)
	}
	os.Rename(filepath.Join(f.root, "var"), filepath.Join(f.root, "var.away"))
	if got := r.Name("podman:" + idB); got != "db-1" {
		t.Errorf("state gone before the next check: %q, want the cached db-1 (no file read)", got)
	}
	os.Rename(filepath.Join(f.root, "var.away"), filepath.Join(f.root, "var"))
	f.now = f.now.Add(DefaultInterval)
	if got := r.Name("docker:" + idA); got != "web-2" {
		t.Errorf("after the check: %q, want web-2", got)
	}
	if got, got2 := r.Name("podman:"+idB), r.Name("podman:"+idC); got != "db-2" || got2 != "cache" {
		t.Errorf("after the check: %q, %q, want db-2, cache", got, got2)
	}
	// The container is removed: its name goes at the next check.
	os.RemoveAll(filepath.Join(f.root, dockerDir, idA))
	f.now = f.now.Add(DefaultInterval)
	if got := r.Name("docker:" + idA); got != "" {
		t.Errorf("removed container: %q, want none", got)
	}
}

// TestCacheIsBounded: the cache holds at most MaxFiles state files.
func TestCacheIsBounded(t *testing.T) {
	f := newTree(t)
	r := New(Options{Root: f.root, MaxFiles: 8, Now: func() time.Time { return f.now }})
	for i := 0; i < 100; i++ {
		id := fmt.Sprintf("%064x", i)
		f.write(dockerDir+"/"+id+"/config.v2.json", dockerConfig(id, fmt.Sprintf("/c%d", i)), 0, 0o600)
		if got := r.Name("docker:" + id); got != fmt.Sprintf("c%d", i) {
			t.Fatalf("container %d: %q", i, got)
		}
		f.now = f.now.Add(time.Millisecond)
	}
	r.mu.Lock()
	n := len(r.files)
	r.mu.Unlock()
	if n > 8 {
		t.Errorf("%d files cached, want at most 8", n)
	}
}

// TestConcurrentLookups: lookups from many goroutines while the file changes.
func TestConcurrentLookups(t *testing.T) {
	f := newTree(t)
	f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-1"), 0, 0o600)
	r := New(Options{Root: f.root, Interval: time.Nanosecond})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				if n := r.Name("docker:" + idA); n != "web-1" && n != "web-2" {
					t.Errorf("Name = %q", n)
					return
				}
			}
		}()
	}
	f.write(dockerDir+"/"+idA+"/config.v2.json", dockerConfig(idA, "/web-2"), 0, 0o600)
	wg.Wait()
}

func mkfifo(path string) error { return unix.Mkfifo(path, 0o600) }

func jsonString(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}
