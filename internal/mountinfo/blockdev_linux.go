package mountinfo

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Review 46: a block device may itself be served by a process or stored on a
// file latch does not trust: an ext2 image on a loop device whose backing file
// is on FUSE (udisks2 sets that up for a desktop user and mounts it as root),
// an nbd, ublk or rbd device, or a device-mapper or md device over one of
// those. Each block read of such a mount's files (a lookup, a stat not in
// cache, an exec's page) waits on that server. So a mount on a block device is
// trusted only if its device is none of these: a loop device's backing file (the
// path sysfs gives) must be opened by Open, which enters no mount of a type
// Untrusted names (a loop device over a file on an ordinary disk, as snaps are,
// stays trusted);
// device-mapper and md devices are checked through their slaves in sysfs, a
// partition through its disk.

// maxBlockDepth bounds the block devices followed below a mount's (loop over a
// file on a loop device's mount, dm over loop ...).
const maxBlockDepth = 4

// BlockType returns fstype if the block device maj:min (the st_dev of a file on
// a mount of type fstype) is none latch distrusts, else fstype with why ("ext2
// on loop0 over fuse"), which Untrusted names (review 46: see blockType).
func BlockType(maj, min uint32, fstype string) string {
	if Stacking(fstype) || Untrusted(fstype) {
		return fstype
	}
	return blockType(maj, min, fstype)
}

// blockType returns fstype if the device maj:min (a mount's st_dev) is not a
// block device latch distrusts (see above), and otherwise fstype with why
// ("ext2 on loop0 over fuse.sshfs"), which Untrusted names.
func blockType(maj, min uint32, fstype string) string {
	if maj == 0 {
		return fstype // an anonymous device: no block device
	}
	if why := blockWhy(maj, min, 0); why != "" {
		return fstype + " on " + why
	}
	return fstype
}

// blockWhy returns "" if latch trusts the block device maj:min, else why not.
func blockWhy(maj, min uint32, depth int) string {
	name := fmt.Sprintf("%d:%d", maj, min)
	if depth > maxBlockDepth {
		return name + ", block devices nested too deep"
	}
	sys, err := filepath.EvalSymlinks("/sys/dev/block/" + name)
	if err != nil {
		return name + ", a block device latch cannot tell"
	}
	dev := filepath.Base(sys)
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		// A partition: its disk is the sysfs directory above.
		pmaj, pmin, ok := sysDev(filepath.Dir(sys))
		if !ok {
			return dev + ", a partition of a disk latch cannot tell"
		}
		return blockWhy(pmaj, pmin, depth+1)
	}
	switch {
	case maj == 43 || strings.HasPrefix(dev, "nbd"):
		return dev + ", a network block device"
	case strings.HasPrefix(dev, "ublkb"):
		return dev + ", a block device served by a process (ublk)"
	case strings.HasPrefix(dev, "rbd"):
		return dev + ", a network block device (rbd)"
	case maj == 7:
		return loopWhy(dev, maj, min, depth)
	}
	slaves, _ := os.ReadDir(filepath.Join(sys, "slaves"))
	for _, s := range slaves {
		smaj, smin, ok := sysDev(filepath.Join(sys, "slaves", s.Name()))
		if !ok {
			return dev + " over a block device latch cannot tell (" + s.Name() + ")"
		}
		if why := blockWhy(smaj, smin, depth+1); why != "" {
			return dev + " over " + why
		}
	}
	return ""
}

// sysDev reads the "dev" file (MAJ:MIN) of the sysfs block device directory dir.
func sysDev(dir string) (uint32, uint32, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "dev"))
	if err != nil {
		return 0, 0, false
	}
	a, c, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	if !ok {
		return 0, 0, false
	}
	maj, err1 := strconv.ParseUint(a, 10, 32)
	min, err2 := strconv.ParseUint(c, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uint32(maj), uint32(min), true
}

// loopWhy checks the backing file of the loop device dev (maj:min) and returns
// "" if it is on a mount of a trusted type, else why not. The file is found by
// the path sysfs gives (backing_file, from the daemon's root), opened by Open,
// which enters no mount Untrusted names. LOOP_GET_STATUS64 would give the
// file's device, but the kernel stats the backing file for it: on FUSE a
// request the server may never answer. Left open: a path that no longer leads
// to the backing file (its FUSE mount lazily unmounted) checks another file,
// as for an overlay's layers.
func loopWhy(dev string, maj, min uint32, depth int) string {
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/loop/backing_file", maj, min))
	if err != nil {
		return dev + ", a loop device latch cannot ask"
	}
	p := strings.TrimSuffix(string(b), "\n")
	if !strings.HasPrefix(p, "/") || strings.HasSuffix(p, " (deleted)") {
		return dev + " over a file latch cannot find (" + p + ")"
	}
	fd, err := Open(unix.AT_FDCWD, p)
	if err != nil {
		if u, ok := err.(*UntrustedError); ok && u.FSType != "" {
			return dev + " over " + u.FSType
		}
		return dev + " over a file latch cannot find (" + p + ")"
	}
	defer unix.Close(fd)
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, 0, &stx); err != nil {
		return dev + " over a file latch cannot stat (" + p + ")"
	}
	if stx.Mode&unix.S_IFMT != unix.S_IFREG && stx.Mode&unix.S_IFMT != unix.S_IFBLK {
		return dev + " over a file that is not one (" + p + ")"
	}
	if stx.Dev_major != 0 {
		if why := blockWhy(stx.Dev_major, stx.Dev_minor, depth+1); why != "" {
			return dev + " over " + why
		}
	}
	return ""
}
