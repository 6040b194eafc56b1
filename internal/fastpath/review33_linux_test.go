package fastpath

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"golang.org/x/sys/unix"
)

// TestReview33UserTouchDropsOthersEntries (review33, open, low: availability):
// any event on any watched executable bumps the generation, so every decision
// stored for every program and user misses from then on. An unprivileged user
// with a program of their own that a rule allows (and the fast path cached)
// changes its attributes (touch: IN_ATTRIB) as often as they like, no
// privilege needed: each time, every other user's cached decisions go (their
// connections all go through the queue until stored again), and a loop keeps
// the whole cache empty. The same holds for the 4096-watch bound, which a user
// whose programs a rule allows reaches with 2048 copies of a program
// (Remember drops every watch and bumps). Fail-closed, so no decision is
// wrong, but one user costs all others the fast path. Fix: on an event,
// delete the entries stored under that executable (or, for a directory's
// event, its executables) instead of bumping the generation: fp.exes knows
// which identity was stored for which path (inotify does not say who caused
// an event, so telling a user's touch from root's upgrade is not possible).
func TestReview33UserTouchDropsOthersEntries(t *testing.T) {
	eachTaskRead(t, func(t *testing.T, cfg Config) {
		cg, cgfd := testCgroup(t)
		exe := publicCopy(t) // root's program, in a directory of root's
		ownNetns(t)
		fp := openTest(t, cg, cfg)
		if s := fp.Stats(); !s.TCPLocal {
			t.Skipf("no TCP fast path: %+v", s)
		}
		// The user's own program, in a directory of theirs.
		b, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		home := t.TempDir()
		for d := home; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
		if err := os.Chown(home, review28Uid, review28Uid); err != nil {
			t.Fatal(err)
		}
		own := filepath.Join(home, "mine")
		if err := os.WriteFile(own, b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(own, review28Uid, review28Uid); err != nil {
			t.Fatal(err)
		}
		fp.RulesChanged([]engine.Rule{{ID: 1, App: exe, Action: engine.Allow}, {ID: 2, App: own, Action: engine.Allow}})
		dst := listen(t, "tcp4", "127.0.0.1:0")
		other := startClientAs(t, 0, cgfd, exe, exe) // another user's (root's) program
		mine := startClientAs(t, review28Uid, cgfd, own, own)
		ro := req(other, dst)
		ro.UID = 0
		rm := req(mine, dst)
		rm.UID = review28Uid
		for _, s := range []struct {
			r  *engine.Request
			id engine.RuleID
		}{{ro, 1}, {rm, 2}} {
			if ok, err := fp.Remember(fp.Ticket(), s.r, ruleVerdict(engine.Allow, s.id)); !ok {
				t.Fatalf("%s not stored: %v", s.r.Exe, err)
			}
		}
		if got := other.connect(t, dst); got != "ok 0x60000000" {
			t.Fatalf("the other user's program before: %q, want a hit", got)
		}
		// The unprivileged user touches their own program.
		touch := exec.Command("touch", own)
		touch.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: review28Uid, Gid: review28Uid}}
		if out, err := touch.CombinedOutput(); err != nil {
			t.Fatalf("touch %s as uid %d: %v\n%s", own, review28Uid, err, out)
		}
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if fp.exeWatch != nil && fp.exeWatch.handled.Load() > 0 {
				break
			}
		}
		if got := other.connect(t, dst); got != "ok 0x60000000" {
			t.Errorf("another user's allowed program after an unprivileged user touched their own cached program: %q, want a hit still (its entry was dropped: the touch bumped the generation of every entry)", got)
		}
	})
}

// TestReview33OverlayProgramHits (review33, low: performance; resolved as a
// miss, not a hit): the kernel's key has the executable's super block's device
// (i_sb->s_dev), the stored entry the device statx gives for the file
// (exeIdentity). The two differ where the file system reports another device to
// stat than its super block's: an overlayfs whose layers are on different file
// systems, without xino (a live system's squashfs under a tmpfs; here sb 0:42,
// statx 0:44), and btrfs for a subvolume. An allowed program there never hits.
// The suggested fix (store the super block's device) would be wrong: there the
// kernel gives each file the inode number of its layer's file, so two files in
// one directory from different layers can have the same number, and so the same
// key (overlayfs reports a pseudo device per layer to stat for exactly this
// reason: "the pair {real st_ino; overlay st_dev} is not unique"); a program in
// the upper layer would hit the decision stored for the lower layer's. So such
// a file's decision is not stored (it never hit: a map entry and two watches
// spent for nothing), and where stat's device is the super block's (both layers
// on one file system, or xino) it is stored and hits, as before. Subtests:
// samefs and xino hit (as on main); twofs: not stored (stored on main), and a
// program of the upper layer with the lower one's inode number in the same
// directory misses (it hits with the suggested fix: tried).
func TestReview33OverlayProgramHits(t *testing.T) {
	for _, layout := range []string{"samefs", "xino", "twofs"} {
		t.Run(layout, func(t *testing.T) { overlayProgram(t, layout) })
	}
}

// overlayProgram runs TestReview33OverlayProgramHits on an overlayfs with both
// layers on one tmpfs (samefs), or on two (xino: with xino=on; twofs: without).
func overlayProgram(t *testing.T, layout string) {
	eachTaskRead(t, func(t *testing.T, cfg Config) {
		cg, cgfd := testCgroup(t)
		bin := publicCopy(t)
		dir := filepath.Dir(bin)
		lower, upper, merged := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "merged")
		mounts := []string{lower, upper}
		if layout == "samefs" {
			lower, upper = filepath.Join(dir, "fs", "lower"), filepath.Join(dir, "fs", "upper")
			mounts = []string{filepath.Join(dir, "fs")}
		}
		for _, d := range mounts {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Mount("tmpfs", d, "tmpfs", 0, "mode=0755"); err != nil {
				t.Skipf("mount tmpfs: %v", err)
			}
			t.Cleanup(func() { syscall.Unmount(d, syscall.MNT_DETACH) })
		}
		for _, d := range []string{lower, upper, merged, filepath.Join(lower, "bin"), filepath.Join(upper, "up"), filepath.Join(upper, "work")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		// Files before the client in the lower layer: its inode number is
		// then one the upper layer gives a new file a little later.
		for i := range 16 {
			if err := os.WriteFile(filepath.Join(lower, "bin", fmt.Sprintf("d%d", i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(lower, "bin", "client"), b, 0o755); err != nil {
			t.Fatal(err)
		}
		opts := "lowerdir=" + lower + ",upperdir=" + filepath.Join(upper, "up") + ",workdir=" + filepath.Join(upper, "work")
		if layout == "xino" {
			opts += ",xino=on"
		}
		if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
			t.Skipf("mount overlay %s: %v", opts, err)
		}
		t.Cleanup(func() { syscall.Unmount(merged, syscall.MNT_DETACH) })
		exe := filepath.Join(merged, "bin", "client")
		ownNetns(t)
		fp := openTest(t, cg, cfg)
		if s := fp.Stats(); !s.TCPLocal {
			t.Skipf("no TCP fast path: %+v", s)
		}
		fp.RulesChanged([]engine.Rule{{ID: 1, App: exe, Action: engine.Allow}})
		dst := listen(t, "tcp4", "127.0.0.1:0")
		prog := startClientAs(t, review28Uid, cgfd, exe, exe)
		r := req(prog, dst)
		r.UID = review28Uid
		ok, err := fp.Remember(fp.Ticket(), r, ruleVerdict(engine.Allow, 1))
		if layout != "twofs" {
			if !ok {
				t.Fatalf("not stored: %v", err)
			}
			const n = 5
			hits := 0
			for range n {
				if got := prog.connect(t, dst); got == "ok 0x60000000" {
					hits++
				}
			}
			if hits != n {
				t.Errorf("an allowed program on an overlayfs (%s): %d of %d connects hit; want all", layout, hits, n)
			}
			return
		}
		if ok {
			t.Errorf("an allowed program on an overlayfs over two file systems without xino: stored, want not stored (stat's device is a layer's pseudo device, never the kernel's: the entry could not hit, and the super block's device with the inode number does not tell the layers' files apart)")
		}
		// A program of the upper layer, in the same directory, with the
		// lower client's inode number.
		var want unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, exe, 0, unix.STATX_INO, &want); err != nil {
			t.Fatal(err)
		}
		other := ""
		for i := range 64 {
			p := filepath.Join(merged, "bin", fmt.Sprintf("u%d", i))
			if err := os.WriteFile(p, b, 0o755); err != nil {
				t.Fatal(err)
			}
			var st unix.Statx_t
			if err := unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_INO, &st); err != nil {
				t.Fatal(err)
			}
			if st.Ino == want.Ino {
				other = p
				break
			}
		}
		if other == "" {
			t.Skipf("no file of the upper layer got inode number %d", want.Ino)
		}
		up := startClientAs(t, review28Uid, cgfd, other, other)
		if got := up.connect(t, dst); got != "ok 0x0" {
			t.Errorf("%s, of the upper layer, with the allowed %s's inode number in the same directory: %q, want a miss (no rule allows it)", other, exe, got)
		}
	})
}

// TestReview33DirSwapThenRenameAwayHitsOldEntry (review33, open, low; review29's
// class): the executables' watch keys its watches by path, and an event on a
// directory drops only the directory's watch. After the stored program's
// directory is renamed ("app" -> "app.old", then a new "app" put in its place:
// the upgrade that swaps directories, which TestRenamedDirectoryMissesEntry
// covers), the watch of the old file is still in byPath under the old path, so
// when the new program at that path is stored, watch finds the path watched
// and adds none for the new file. Renamed away later within its directory
// ("prog" -> "prog.old", review29's upgrade step), the new program gives no
// event (its directory's watch reports the directory's own moves only), keeps
// its key, and keeps hitting the entries stored for "prog", where attribution
// names it "prog.old", which the --app rule for "prog" does not match. Fails on
// current main (a hit after the rename). The same stale path is left by a
// mount over the directory or above it (a systemd-sysext or ostree refresh of
// /usr): the mount watch bumps the generation but keeps every watch, so the
// programs of the new /usr are stored unwatched (subtest mount=true: a tmpfs
// mounted over the directory, root).
// Fix: watch always asks inotify (inotify_add_watch returns the watched
// inode's wd, a new one for a new inode at the path) and maps the path to the
// wd it got now; or drop every watch at a directory's event and at a mount
// change, as at the bound. (Passes with the former, tried outside the tree.)
func TestReview33DirSwapThenRenameAwayHitsOldEntry(t *testing.T) {
	for _, mount := range []bool{false, true} {
		t.Run(fmt.Sprintf("mount=%v", mount), func(t *testing.T) { dirSwapThenRenameAway(t, mount) })
	}
}

// dirSwapThenRenameAway runs TestReview33DirSwapThenRenameAwayHitsOldEntry
// with the directory swapped by a rename, or (mount) covered by a tmpfs
// mounted over it.
func dirSwapThenRenameAway(t *testing.T, mount bool) {
	eachTaskRead(t, func(t *testing.T, cfg Config) {
		cg, cgfd := testCgroup(t)
		exe := publicCopy(t)
		ownNetns(t)
		fp := openTest(t, cg, cfg)
		if s := fp.Stats(); !s.TCPLocal {
			t.Skipf("no TCP fast path: %+v", s)
		}
		old, dst := storeAllowed(t, fp, exe, cgfd)
		if got := old.connect(t, dst); got != "ok 0x60000000" {
			t.Fatalf("before the swap: %q, want a hit", got)
		}
		b, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		if fp.exeWatch == nil || fp.mountWatch == nil {
			t.Fatal("no executables' or mount tables' watch")
		}
		handled := func() uint64 { return fp.exeWatch.handled.Load() + fp.mountWatch.handled.Load() }
		waitHandled := func(after uint64) uint64 {
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if h := handled(); h > after {
					return h
				}
			}
			return handled()
		}
		h0 := handled()
		dir := filepath.Dir(exe)
		if mount {
			// A new file system over the directory (root: a sysext refresh).
			if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
				t.Skipf("mount tmpfs over %s: %v", dir, err)
			}
			t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
		} else {
			// The directory swapped: the old one moved aside, a new one in its place.
			if err := os.Rename(dir, dir+".old"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir + ".old") })
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(exe, b, 0o755); err != nil {
			t.Fatal(err)
		}
		h := waitHandled(h0)
		if h == h0 {
			t.Fatal("the directory's change was not handled in 3 s")
		}
		// The new program at the path, its decision stored under a fresh ticket.
		prog := startClientAs(t, review28Uid, cgfd, exe, exe)
		r := req(prog, dst)
		r.UID = review28Uid
		if ok, err := fp.Remember(fp.Ticket(), r, ruleVerdict(engine.Allow, 1)); !ok {
			t.Fatalf("the new program's decision not stored: %v", err)
		}
		if got := prog.connect(t, dst); got != "ok 0x60000000" {
			t.Fatalf("the new program: %q, want a hit", got)
		}
		// Renamed away within its directory.
		if err := os.Rename(exe, exe+".old"); err != nil {
			t.Fatal(err)
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", prog.pid)); err != nil || l != exe+".old" {
			t.Fatalf("the new program's executable: %q %v; want %s.old", l, err, exe)
		}
		waitHandled(h)
		if got := prog.connect(t, dst); got != "ok 0x0" {
			t.Errorf("the new program, renamed away from the allowed name after its directory was swapped: %q, want a miss (attribution names it %s.old, which the --app rule for %s does not match)", got, exe, exe)
		}
	})
}

// TestExeWatchEventDeletesOnlyItsEntries: an event on a watched executable
// deletes the entries stored under its watch, not the others' (review33), and
// no generation bump is asked for; a decision whose watch saw an event between
// watch and commit is not stored (the event may be its file's rename after its
// identity was read), and one committed before the event is handled is deleted
// by it.
func TestExeWatchEventDeletesOnlyItsEntries(t *testing.T) {
	var mu sync.Mutex
	var deleted []uint64
	w, err := newExeWatch(16, 100, func(k *fastpathFpKey) error {
		mu.Lock()
		deleted = append(deleted, k.Ino)
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var bumps atomic.Int32
	done := make(chan struct{})
	go func() { defer close(done); w.run(func() { bumps.Add(1) }) }()
	defer func() { w.close(); <-done }()
	dir, other := t.TempDir(), t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(other, "b")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	store := func(p string, ino uint64) (watched, func() (bool, error)) {
		wt, err := w.watch(p, 1)
		if err != nil {
			t.Fatal(err)
		}
		return wt, func() (bool, error) {
			return w.commit(wt, identity{ino: ino}, p, fastpathFpKey{Ino: ino, Uid: 1}, func() error { return nil })
		}
	}
	waitHandled := func(h uint64) {
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && w.handled.Load() == h; time.Sleep(5 * time.Millisecond) {
		}
		if w.handled.Load() == h {
			t.Fatal("the event was not handled in 3 s")
		}
	}
	_, commitA := store(a, 1)
	if ok, err := commitA(); !ok || err != nil {
		t.Fatalf("commit a: %v %v", ok, err)
	}
	_, commitB := store(b, 2)
	if ok, err := commitB(); !ok || err != nil {
		t.Fatalf("commit b: %v %v", ok, err)
	}
	h := w.handled.Load()
	if err := os.Chmod(a, 0o700); err != nil { // IN_ATTRIB, as touch
		t.Fatal(err)
	}
	waitHandled(h)
	mu.Lock()
	if !slices.Equal(deleted, []uint64{1}) {
		t.Errorf("entries deleted after a's attributes changed: %v, want a's only [1]", deleted)
	}
	deleted = nil
	mu.Unlock()
	if n := bumps.Load(); n != 0 {
		t.Errorf("generation bumps: %d, want 0", n)
	}
	// An event between watch and commit: not stored.
	_, commitA = store(a, 1)
	h = w.handled.Load()
	if err := os.Chmod(a, 0o755); err != nil {
		t.Fatal(err)
	}
	waitHandled(h)
	if ok, err := commitA(); ok || err != nil {
		t.Errorf("a commit after an event on its watch: %v %v, want not stored", ok, err)
	}
	// b, untouched, still indexed: its directory renamed deletes it.
	h = w.handled.Load()
	if err := os.Rename(other, other+".old"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Rename(other+".old", other) })
	waitHandled(h)
	mu.Lock()
	if !slices.Equal(deleted, []uint64{2}) {
		t.Errorf("entries deleted after b's directory was renamed: %v, want b's [2]", deleted)
	}
	mu.Unlock()
}

// TestExeWatchKeyBoundEvictsTopUID: at the bound of keys indexed, the uid with
// the most keys loses its entries, not the one storing (nor everyone).
func TestExeWatchKeyBoundEvictsTopUID(t *testing.T) {
	var deleted []fastpathFpKey
	w, err := newExeWatch(16, 2, func(k *fastpathFpKey) error { deleted = append(deleted, *k); return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	dir := t.TempDir()
	for _, n := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	store := func(n string, ino uint64, uid uint32, port uint16) error {
		p := filepath.Join(dir, n)
		wt, err := w.watch(p, uid)
		if err != nil {
			return err
		}
		ok, err := w.commit(wt, identity{ino: ino}, p, fastpathFpKey{Ino: ino, Uid: uid, Port: port}, func() error { return nil })
		if err != nil || !ok {
			return fmt.Errorf("commit %s for uid %d: %v %v", n, uid, ok, err)
		}
		return nil
	}
	for port := range uint16(2) {
		if err := store("a", 1, 1, port); err != nil {
			t.Fatal(err)
		}
	}
	if err := store("b", 2, 2, 9); err != nil {
		t.Errorf("uid 2's store past the keys' bound that uid 1 filled: %v", err)
	}
	slices.SortFunc(deleted, func(a, b fastpathFpKey) int { return int(a.Port) - int(b.Port) })
	if want := []fastpathFpKey{{Ino: 1, Uid: 1, Port: 0}, {Ino: 1, Uid: 1, Port: 1}}; !slices.Equal(deleted, want) {
		t.Errorf("entries deleted at the keys' bound: %+v, want uid 1's %+v", deleted, want)
	}
}
