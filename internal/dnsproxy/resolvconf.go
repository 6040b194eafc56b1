package dnsproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// ResolvConf points a resolv.conf file at the proxy while the daemon runs and puts
// the original back on a clean stop. The original (its content, and its symbolic
// link's target if it was one, as systemd-resolved's stub-resolv.conf is) is kept in
// the daemon's state directory until restored, so a daemon that crashed finds it
// again at its next start: it never takes its own file for the original.
type ResolvConf struct {
	Path   string // the resolv.conf, e.g. /etc/resolv.conf
	backup string // the original's content
	link   string // the original's link target, if it was a symbolic link
	orig   []byte
}

// OpenResolvConf reads the original resolv.conf at path (from the backup in stateDir
// if an earlier run left one) and backs it up. It changes nothing at path.
func OpenResolvConf(path, stateDir string) (*ResolvConf, error) {
	rc := &ResolvConf{Path: path, backup: filepath.Join(stateDir, "resolv.conf.orig"), link: filepath.Join(stateDir, "resolv.conf.orig-link")}
	if b, err := os.ReadFile(rc.backup); err == nil {
		rc.orig = b // a run that did not stop cleanly: its original still counts
		return rc, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("resolv.conf backup %s: %w", rc.backup, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("resolv.conf %s: %w", path, err)
	}
	rc.orig = b
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		target, err := os.Readlink(path)
		if err != nil {
			return nil, fmt.Errorf("resolv.conf %s: %w", path, err)
		}
		if err := writeAtomic(rc.link, []byte(target)); err != nil {
			return nil, err
		}
	}
	if err := writeAtomic(rc.backup, b); err != nil {
		os.Remove(rc.link)
		return nil, err
	}
	return rc, nil
}

// Nameservers returns the original's name servers as ADDRESS:53, leaving out skip
// (the proxy's own address).
func (rc *ResolvConf) Nameservers(skip netip.Addr) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(string(rc.orig)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || a.Unmap() == skip.Unmap() {
			continue
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	return out
}

// Point replaces the file with one naming only the proxy's address as name server,
// keeping the original's search, domain and options lines.
func (rc *ResolvConf) Point(proxy netip.Addr) error {
	var b strings.Builder
	b.WriteString("# Written by latch (latch daemon --dns-proxy): DNS goes through latch's resolver.\n")
	b.WriteString("# The original is restored when the daemon stops.\n")
	fmt.Fprintf(&b, "nameserver %s\n", proxy)
	sc := bufio.NewScanner(strings.NewReader(string(rc.orig)))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 && (f[0] == "search" || f[0] == "domain" || f[0] == "options") {
			b.WriteString(sc.Text() + "\n")
		}
	}
	return writeAtomic(rc.Path, []byte(b.String()))
}

// Restore puts the original back (as a symbolic link if it was one) and removes the
// backup.
func (rc *ResolvConf) Restore() error {
	if target, err := os.ReadFile(rc.link); err == nil {
		tmp := rc.Path + ".latch-tmp"
		os.Remove(tmp)
		if err := os.Symlink(string(target), tmp); err != nil {
			return fmt.Errorf("restore resolv.conf link %s: %w", rc.Path, err)
		}
		if err := os.Rename(tmp, rc.Path); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("restore resolv.conf link %s: %w", rc.Path, err)
		}
	} else if err := writeAtomic(rc.Path, rc.orig); err != nil {
		return fmt.Errorf("restore resolv.conf: %w", err)
	}
	os.Remove(rc.link)
	return os.Remove(rc.backup)
}

// writeAtomic writes b to path through a temporary file and a rename (which replaces
// a symbolic link itself, not its target).
func writeAtomic(path string, b []byte) error {
	tmp := path + ".latch-tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

// RestoreLeftover puts back the original resolv.conf that a daemon which did not stop
// cleanly kept in stateDir, if there is one, and reports whether there was.
func RestoreLeftover(path, stateDir string) (bool, error) {
	backup := filepath.Join(stateDir, "resolv.conf.orig")
	if _, err := os.Stat(backup); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	rc, err := OpenResolvConf(path, stateDir)
	if err != nil {
		return false, err
	}
	return true, rc.Restore()
}
