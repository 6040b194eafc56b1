//go:build unix

package blocklist

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

func newEngine(t *testing.T) *engine.Engine {
	t.Helper()
	eng, err := engine.New(engine.Config{Default: engine.Deny, PromptTimeout: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	return eng
}

func openManager(t *testing.T, state string) (*Manager, []string) {
	t.Helper()
	var logs []string
	done := make(chan struct{})
	var m *Manager
	var err error
	go func() {
		defer close(done)
		m, err = Open(state, newEngine(t), func(f string, a ...any) { logs = append(logs, f) })
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Open did not return within 10 s")
	}
	if err != nil {
		t.Fatal(err)
	}
	return m, logs
}

// TestManagerKeepsCopies: the daemon keeps a copy of each list as the client sent it
// and loads that at the next start, whatever happened to the file it came from
// meanwhile (here: replaced by a FIFO). Update replaces the copies all or nothing.
func TestManagerKeepsCopies(t *testing.T) {
	state := t.TempDir()
	m, _ := openManager(t, state)
	src := filepath.Join(t.TempDir(), "ads.txt")
	if err := m.Add(Source{Name: "ads", Path: src, Action: engine.Deny}, []byte("ads.example\n198.18.0.0/15\n")); err != nil {
		t.Fatal(err)
	}
	if err := m.Add(Source{Name: "more", Path: src + "2", Action: engine.Deny}, []byte("more.example\n")); err != nil {
		t.Fatal(err)
	}
	if err := m.Add(Source{Name: "bad", Path: src, Action: engine.Deny}, []byte("ok.example\nnot a domain\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("a bad line: %v, want an error naming line 2", err)
	}
	syscall.Mkfifo(src, 0o644)
	m2, logs := openManager(t, state)
	ls := m2.Lists()
	if len(ls) != 2 || ls[0].Name != "ads" || ls[0].Error != "" || ls[0].Stats != (Stats{Domains: 1, Prefixes: 1}) || ls[0].Path != src {
		t.Errorf("after a restart: %+v (logs %q)", ls, logs)
	}
	// Update: one bad list changes none.
	err := m2.Update([]Contents{{Name: "ads", Path: src, Data: []byte("a.example\nb.example\n")}, {Name: "more", Path: src + "2", Data: []byte("||x^bad\n")}})
	if err == nil || !strings.Contains(err.Error(), "no list was updated") {
		t.Errorf("update with a bad list: %v", err)
	}
	if err := m2.Update([]Contents{{Name: "ads", Path: "/elsewhere", Data: []byte("a.example\n")}}); err == nil {
		t.Error("update of a list from another file than its own: no error")
	}
	if ls := m2.Lists(); ls[0].Stats.Domains != 1 {
		t.Errorf("after refused updates: %+v", ls)
	}
	if err := m2.Update([]Contents{{Name: "ads", Path: src, Data: []byte("a.example\nb.example\n")}}); err != nil {
		t.Fatal(err)
	}
	if err := m2.Remove("more"); err != nil {
		t.Fatal(err)
	}
	m3, _ := openManager(t, state)
	if ls := m3.Lists(); len(ls) != 1 || ls[0].Stats.Domains != 2 || ls[0].Error != "" {
		t.Errorf("after update and rm, restarted: %+v", ls)
	}
	// One copy remains, private.
	ents, _ := os.ReadDir(filepath.Join(state, CopyDir))
	if len(ents) != 1 {
		t.Errorf("copies left: %v, want one", ents)
	}
	for _, e := range ents {
		if fi, _ := e.Info(); fi.Mode().Perm() != 0o600 {
			t.Errorf("copy %s: mode %04o", e.Name(), fi.Mode().Perm())
		}
	}
}

// TestOpenOlderListsFile (review 34): a lists file of an older latch names the files
// the daemon read itself. At the next start each is read once more, but only a
// regular file: a FIFO (which hung the start) or a symbolic link (to a file only root
// may read) is an error on that list, the daemon starts, and no error quotes what the
// file holds. A good one is copied and no longer read.
func TestOpenOlderListsFile(t *testing.T) {
	state := t.TempDir()
	files := t.TempDir()
	good := filepath.Join(files, "good.txt")
	os.WriteFile(good, []byte("good.example\n"), 0o644)
	fifo := filepath.Join(files, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(files, "shadow")
	os.WriteFile(secret, []byte("root:$y$secrethash:19000::::::\n"), 0o600)
	link := filepath.Join(files, "link")
	os.Symlink(secret, link)
	hard := filepath.Join(files, "hard")
	os.Link(secret, hard)
	srcs := []Source{{"good", good, engine.Deny}, {"fifo", fifo, engine.Deny}, {"link", link, engine.Deny}, {"hard", hard, engine.Deny}, {"dir", files, engine.Deny}}
	data, _ := json.Marshal(map[string]any{"version": 1, "lists": srcs})
	os.WriteFile(filepath.Join(state, FileName), data, 0o600)
	start := time.Now()
	m, logs := openManager(t, state)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Open took %v", d)
	}
	ls := m.Lists()
	if len(ls) != len(srcs) {
		t.Fatalf("lists: %+v", ls)
	}
	want := map[string]string{"good": "", "fifo": "a FIFO", "link": "symbolic link", "hard": "line 1", "dir": "a directory"}
	for _, in := range ls {
		w := want[in.Name]
		if (w == "") != (in.Error == "") || !strings.Contains(in.Error, w) {
			t.Errorf("list %s: error %q, want one saying %q", in.Name, in.Error, w)
		}
		if strings.Contains(in.Error, "secrethash") || strings.Contains(in.Error, "root:") {
			t.Errorf("list %s: the error quotes the file: %q", in.Name, in.Error)
		}
	}
	for _, l := range logs {
		if strings.Contains(l, "secrethash") {
			t.Errorf("log quotes the file: %q", l)
		}
	}
	// good was copied: it is no longer read.
	os.Remove(good)
	m2, _ := openManager(t, state)
	if ls := m2.Lists(); ls[0].Name != "good" || ls[0].Error != "" || ls[0].Stats.Domains != 1 {
		t.Errorf("after the older file was copied and removed: %+v", ls[0])
	}
}

// TestReadFileRefusesNonRegular: what the command line reads for the daemon is a
// regular file; a FIFO is an error at once, not a wait.
func TestReadFileRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := ReadFile(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "FIFO") {
			t.Errorf("ReadFile(FIFO): %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadFile(FIFO) waits")
	}
	if _, err := ReadFile(dir); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("ReadFile(directory): %v", err)
	}
	if _, err := ReadFile("/dev/null"); err == nil || !strings.Contains(err.Error(), "device") {
		t.Errorf("ReadFile(/dev/null): %v", err)
	}
	p := filepath.Join(dir, "l.txt")
	os.WriteFile(p, []byte("x.example\n"), 0o644)
	os.Symlink(p, p+".link")
	if data, err := ReadFile(p + ".link"); err != nil || string(data) != "x.example\n" {
		t.Errorf("ReadFile through a link (the user's own rights): %q %v", data, err)
	}
}

// TestOpenRemovesStrayCopies: a copy no list names (a crash between writing it and
// saving lists.json) is removed at the next start; the lists' own stay.
func TestOpenRemovesStrayCopies(t *testing.T) {
	state := t.TempDir()
	m, _ := openManager(t, state)
	if err := m.Add(Source{Name: "ads", Path: "/srv/ads.txt", Action: engine.Deny}, []byte("ads.example\n")); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(state, CopyDir, "ads-123.list")
	os.WriteFile(stray, []byte("x.example\n"), 0o600)
	m2, _ := openManager(t, state)
	if _, err := os.Stat(stray); err == nil {
		t.Error("a stray copy was kept")
	}
	if ls := m2.Lists(); len(ls) != 1 || ls[0].Error != "" || ls[0].Stats.Domains != 1 {
		t.Errorf("lists: %+v", ls)
	}
}
