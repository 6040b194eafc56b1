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
	kept   bool // the original came from an earlier run's backup
}

// OpenResolvConf reads the original resolv.conf at path (from the backup in stateDir
// if an earlier run left one) and backs it up. It changes nothing at path.
func OpenResolvConf(path, stateDir string) (*ResolvConf, error) {
	rc := &ResolvConf{Path: path, backup: filepath.Join(stateDir, "resolv.conf.orig"), link: filepath.Join(stateDir, "resolv.conf.orig-link")}
	if b, err := os.ReadFile(rc.backup); err == nil {
		rc.orig, rc.kept = b, true // a run that did not stop cleanly: its original still counts
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
	return nameservers(rc.orig, skip)
}

// ResolvedStub is the address of systemd-resolved's stub resolver (and 127.0.0.54 its
// proxy stub), named by its stub-resolv.conf.
var ResolvedStub = []netip.Addr{netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("127.0.0.54")}

// resolvedUplink is where systemd-resolved writes the name servers it uses itself
// (its uplink resolv.conf), when the original resolv.conf is its stub file but not a
// symbolic link to it (a variable for tests).
var resolvedUplink = "/run/systemd/resolve/resolv.conf"

// SystemdResolved reports whether the original resolv.conf is systemd-resolved's stub
// (a symbolic link to .../stub-resolv.conf; or a file naming only resolved's stub
// addresses while /run/systemd/resolve/resolv.conf exists), and where resolved keeps
// the real name servers: resolv.conf beside the stub file the link points to, else
// /run/systemd/resolve/resolv.conf. A file naming 127.0.0.53 without resolved's files
// is another resolver there: not resolved.
func (rc *ResolvConf) SystemdResolved() (uplink string, ok bool) {
	if target, err := os.ReadFile(rc.link); err == nil {
		t := string(target)
		if filepath.Base(t) == "stub-resolv.conf" {
			if !filepath.IsAbs(t) {
				t = filepath.Join(filepath.Dir(rc.Path), t)
			}
			return filepath.Join(filepath.Dir(t), "resolv.conf"), true
		}
	}
	ns := nameservers(rc.orig, netip.Addr{})
	if len(ns) == 0 {
		return "", false
	}
	for _, s := range ns {
		if !isResolvedStub(netip.MustParseAddrPort(s).Addr()) {
			return "", false
		}
	}
	if _, err := os.Stat(resolvedUplink); err != nil {
		return "", false
	}
	return resolvedUplink, true
}

func isResolvedStub(a netip.Addr) bool {
	for _, s := range ResolvedStub {
		if a.Unmap() == s {
			return true
		}
	}
	return false
}

// ResolvedNameservers reads the real name servers from systemd-resolved's uplink
// resolv.conf (see SystemdResolved), as ADDRESS:53, leaving out skip and resolved's
// own stub addresses.
func ResolvedNameservers(uplink string, skip netip.Addr) ([]string, error) {
	b, err := os.ReadFile(uplink)
	if err != nil {
		return nil, fmt.Errorf("systemd-resolved's name servers: %w", err)
	}
	var out []string
	for _, s := range nameservers(b, skip) {
		if !isResolvedStub(netip.MustParseAddrPort(s).Addr()) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("systemd-resolved's name servers: %s names none (configure --dns-upstream)", uplink)
	}
	return out, nil
}

func nameservers(conf []byte, skip netip.Addr) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(string(conf)))
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

// Point replaces the file with one naming the proxy's address as its first name
// server, keeping the original's search, domain and options lines (but not "rotate",
// which would send every other query past the proxy).
//
// fallback (fail-open) are name servers written after the proxy, at most two (glibc
// reads three): while the proxy answers, every query is answered there (a refusal is an
// answer: NXDOMAIN or an address, never passed on); once nothing listens at its address
// (the daemon was killed or crashed), a query gets "connection refused" at once and the
// resolver moves on to the next server, so DNS keeps working without latch. No
// fallback (fail-closed): DNS stops with the daemon.
func (rc *ResolvConf) Point(proxy netip.Addr, fallback []netip.Addr) error {
	var b strings.Builder
	b.WriteString("# Written by latch (latch daemon --dns-proxy): DNS goes through latch's resolver.\n")
	if len(fallback) > 0 {
		b.WriteString("# Fail-open: the servers after it answer while latch's resolver is not running.\n")
	}
	b.WriteString("# The original is restored when the daemon stops.\n")
	fmt.Fprintf(&b, "nameserver %s\n", proxy)
	n := 0
	for _, f := range fallback {
		if n == 2 || f.Unmap() == proxy.Unmap() {
			continue
		}
		fmt.Fprintf(&b, "nameserver %s\n", f)
		n++
	}
	sc := bufio.NewScanner(strings.NewReader(string(rc.orig)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "search", "domain":
			b.WriteString(sc.Text() + "\n")
		case "options":
			kept := []string{"options"}
			for _, o := range f[1:] {
				if o != "rotate" {
					kept = append(kept, o)
				}
			}
			if len(kept) > 1 {
				b.WriteString(strings.Join(kept, " ") + "\n")
			}
		}
	}
	return writeAtomic(rc.Path, []byte(b.String()))
}

// Release forgets the backup of a file this run has not pointed yet (the daemon could
// not start its resolver): a later start must read the file as it will be then. A
// backup an earlier run left stays, since the file still names its resolver. Release
// of nil does nothing.
func (rc *ResolvConf) Release() {
	if rc == nil || rc.kept {
		return
	}
	os.Remove(rc.link)
	os.Remove(rc.backup)
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
