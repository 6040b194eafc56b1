package mountinfo

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestOpenAsLookup: Open finds what a lookup without symbolic links finds, across
// mounts too, and refuses links, "..", and a file on the way.
func TestOpenAsLookup(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(sub, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(sub, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		t.Fatal(err)
	}
	fd, err := Open(unix.AT_FDCWD, file)
	if err != nil {
		t.Fatalf("Open(%s): %v", file, err)
	}
	if got := inode(t, fd); got != st.Ino {
		t.Errorf("Open(%s) opened inode %d, want %d", file, got, st.Ino)
	}
	unix.Close(fd)
	for _, c := range []struct {
		path string
		want error
	}{
		{filepath.Join(dir, "link", "f"), unix.ELOOP},
		{filepath.Join(dir, "nothing", "f"), unix.ENOENT},
		{filepath.Join(file, "x"), unix.ENOTDIR},
		{filepath.Join(sub, "..", "b", "f"), unix.EINVAL},
	} {
		p := c.path
		if c.want == unix.EINVAL {
			p = sub + "/../b/f" // not cleaned
		}
		if fd, err := Open(unix.AT_FDCWD, p); !errors.Is(err, c.want) {
			if err == nil {
				unix.Close(fd)
			}
			t.Errorf("Open(%s) = %v, want %v", p, err, c.want)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	// A mount on the way (and a file bind-mounted over the last component).
	mnt := filepath.Join(dir, "a")
	if err := unix.Mount("t", mnt, "tmpfs", 0, ""); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() {
		unix.Unmount(filepath.Join(mnt, "x", "g"), unix.MNT_DETACH)
		unix.Unmount(mnt, unix.MNT_DETACH)
	})
	inner := filepath.Join(mnt, "x", "g")
	if err := os.MkdirAll(filepath.Dir(inner), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(inner, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(inner, &st); err != nil {
		t.Fatal(err)
	}
	fd, err = Open(unix.AT_FDCWD, inner)
	if err != nil {
		t.Fatalf("Open(%s) across a tmpfs mount: %v", inner, err)
	}
	if got := inode(t, fd); got != st.Ino {
		t.Errorf("Open(%s) opened inode %d, want %d", inner, got, st.Ino)
	}
	unix.Close(fd)
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(src, inner, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(inner, &st); err != nil {
		t.Fatal(err)
	}
	fd, err = Open(unix.AT_FDCWD, inner)
	if err != nil {
		t.Fatalf("Open(%s), a bind-mounted file: %v", inner, err)
	}
	if got := inode(t, fd); got != st.Ino {
		t.Errorf("Open(%s) opened inode %d, want the bind-mounted file's %d", inner, got, st.Ino)
	}
	unix.Close(fd)
}

func TestFSType(t *testing.T) {
	for _, c := range []struct{ path, want string }{{"/proc/self", "proc"}, {"/sys", "sysfs"}} {
		fd, err := unix.Open(c.path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Skip(err)
		}
		got, err := FSType(fd)
		unix.Close(fd)
		if err != nil || got != c.want {
			t.Errorf("FSType(%s) = %q, %v; want %q", c.path, got, err, c.want)
		}
		// Cached the second time: the same answer.
		fd, _ = unix.Open(c.path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if again, _ := FSType(fd); again != got {
			t.Errorf("FSType(%s) again = %q, want %q", c.path, again, got)
		}
		unix.Close(fd)
	}
	for _, c := range []struct {
		fstype string
		want   bool
	}{{"fuse.sshfs", true}, {"fuseblk", true}, {"nfs4", true}, {"", true}, {"ext4", false}, {"tmpfs", false}, {"fusectl", false}} {
		if got := Untrusted(c.fstype); got != c.want {
			t.Errorf("Untrusted(%q) = %v, want %v", c.fstype, got, c.want)
		}
	}
}

// TestOpenNestedMounts: Open steps to each mount crossed and on past it (review
// 43's linear walk), however many components lie between the crossings.
func TestOpenNestedMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	m1 := filepath.Join(dir, "a", "b", "c")
	if err := os.MkdirAll(m1, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("t", m1, "tmpfs", 0, ""); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { unix.Unmount(m1, unix.MNT_DETACH) })
	m2 := filepath.Join(m1, "d", "e", "f", "g")
	if err := os.MkdirAll(m2, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("t", m2, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(m2, unix.MNT_DETACH) })
	file := filepath.Join(m2, "h", "i", "f")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		t.Fatal(err)
	}
	fd, err := Open(unix.AT_FDCWD, file)
	if err != nil {
		t.Fatalf("Open(%s) across two mounts: %v", file, err)
	}
	if got := inode(t, fd); got != st.Ino {
		t.Errorf("Open(%s) opened inode %d, want %d", file, got, st.Ino)
	}
	unix.Close(fd)
	if err := os.Symlink("i", filepath.Join(m2, "h", "l")); err != nil {
		t.Fatal(err)
	}
	if fd, err := Open(unix.AT_FDCWD, filepath.Join(m2, "h", "l", "f")); !errors.Is(err, unix.ELOOP) {
		if err == nil {
			unix.Close(fd)
		}
		t.Errorf("Open of a link past two mounts: %v, want ELOOP", err)
	}
}

// TestWalk: Walk visits each component with its stat, opens the last, and
// refuses links, "." and "..", a file on the way, and what visit refuses.
func TestWalk(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a", "b", "f")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b", filepath.Join(dir, "a", "l")); err != nil {
		t.Fatal(err)
	}
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	var seen []string
	fd, err := Walk(root, "a/b/f", func(at string, st *unix.Stat_t, last bool) error {
		seen = append(seen, at)
		if last != (at == "/a/b/f") || last && st.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Errorf("visit(%s, mode %o, last %v)", at, st.Mode, last)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	var st unix.Stat_t
	unix.Stat(file, &st)
	if got := inode(t, fd); got != st.Ino {
		t.Errorf("Walk opened inode %d, want %d", got, st.Ino)
	}
	unix.Close(fd)
	if want := "/a /a/b /a/b/f"; strings.Join(seen, " ") != want {
		t.Errorf("Walk visited %q, want %q", seen, want)
	}
	refused := errors.New("refused")
	for _, c := range []struct {
		path  string
		visit func(string, *unix.Stat_t, bool) error
		want  error
	}{
		{"a/l/f", nil, unix.ELOOP},
		{"a/./b/f", nil, unix.EINVAL},
		{"a/../a/b/f", nil, unix.EINVAL},
		{"a/b/f/g", nil, unix.ENOTDIR},
		{"a/b/nothing", nil, unix.ENOENT},
		{"a/b/f", func(at string, _ *unix.Stat_t, _ bool) error {
			if at == "/a/b" {
				return refused
			}
			return nil
		}, refused},
	} {
		if fd, err := Walk(root, c.path, c.visit); !errors.Is(err, c.want) {
			if err == nil {
				unix.Close(fd)
			}
			t.Errorf("Walk(%s) = %v, want %v", c.path, err, c.want)
		}
	}
}

// TestOpenLinearAfterMount (review 43, finding 2): a path whose only mount is
// at its end, 1,900 levels down, is resolved with a number of component lookups
// linear in its depth. Open used to ask openat2 for the whole rest again after
// each one-component step: about depth²/2 lookups (1.8 million here), a user's
// deep path costing a queue reader hundreds of milliseconds per process. The
// lookups are counted, not timed.
func TestOpenLinearAfterMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	const depth = 1900
	base := t.TempDir()
	bottom := filepath.Join(base, strings.Repeat("a/", depth))
	if err := os.MkdirAll(bottom, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("t", bottom, "tmpfs", 0, ""); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { unix.Unmount(bottom, unix.MNT_DETACH) })
	prog := filepath.Join(bottom, "prog")
	if err := os.WriteFile(prog, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	lookups := 0
	openat2, openat = func(dir int, p string, how *unix.OpenHow) (int, error) {
		lookups += strings.Count(p, "/") + 1
		return unix.Openat2(dir, p, how)
	}, func(dir int, p string, flags int, mode uint32) (int, error) {
		lookups++
		return unix.Openat(dir, p, flags, mode)
	}
	t.Cleanup(func() { openat2, openat = unix.Openat2, unix.Openat })
	fd, err := Open(unix.AT_FDCWD, prog)
	if err != nil {
		t.Fatalf("Open(%s): %v", prog, err)
	}
	unix.Close(fd)
	components := strings.Count(strings.Trim(prog, "/"), "/") + 1
	t.Logf("%d components, %d looked up", components, lookups)
	if lookups > 3*components {
		t.Errorf("Open of a %d-component path with a mount at its end looked up %d components (over 3 per component): the walk is not linear in the path's depth", components, lookups)
	}
}
