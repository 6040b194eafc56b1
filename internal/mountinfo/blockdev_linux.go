package mountinfo

import (
	"bytes"
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
// trusted only if its device is none of these: a loop device is asked for its
// backing file's device (LOOP_GET_STATUS64's lo_device), and that device must
// be a mount of a trusted type (found by its major:minor in the mount tables; a
// loop device over a file on an ordinary disk, as snaps are, stays trusted);
// device-mapper and md devices are checked through their slaves in sysfs, a
// partition through its disk.

// maxBlockDepth bounds the block devices followed below a mount's (loop over a
// file on a loop device's mount, dm over loop ...).
const maxBlockDepth = 4

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

// loopWhy asks the loop device dev (maj:min) for its backing file's device and
// returns "" if that is a mount of a trusted type, else why not.
func loopWhy(dev string, maj, min uint32, depth int) string {
	fd, err := unix.Open("/dev/"+dev, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return dev + ", a loop device latch cannot open"
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != maj || unix.Minor(st.Rdev) != min {
		return dev + ", a loop device latch cannot open"
	}
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return dev + ", a loop device latch cannot ask"
	}
	bmaj, bmin := unix.Major(info.Device), unix.Minor(info.Device)
	t, id, ok := typeOfDev(bmaj, bmin)
	switch {
	case !ok:
		return fmt.Sprintf("%s over a file on device %d:%d, in no mount table", dev, bmaj, bmin)
	case Stacking(t) && !RootMount(id):
		return dev + " over " + t
	case Untrusted(t):
		return dev + " over " + t
	}
	if bmaj != 0 {
		if why := blockWhy(bmaj, bmin, depth+1); why != "" {
			return dev + " over " + t + " on " + why
		}
	}
	return ""
}

// typeOfDev finds a mount of the device maj:min in the daemon's mount table,
// then in process 1's, and returns its type and (old) mount id; a device with
// mounts of more than one type gives the first Untrusted names.
func typeOfDev(maj, min uint32) (string, uint64, bool) {
	want := fmt.Sprintf("%d:%d", maj, min)
	for _, p := range []string{"/proc/self/mountinfo", "/proc/1/mountinfo"} {
		b, err := readFile(p)
		if err != nil {
			continue
		}
		var typ string
		var mid uint64
		found := false
		for _, line := range bytes.Split(b, []byte("\n")) {
			f := bytes.Fields(line)
			if len(f) < 3 || string(f[2]) != want {
				continue
			}
			i := bytes.Index(line, []byte(" - "))
			if i < 0 {
				continue
			}
			tf := bytes.Fields(line[i+3:])
			if len(tf) == 0 {
				continue
			}
			id, err := strconv.ParseUint(string(f[0]), 10, 64)
			if err != nil {
				continue
			}
			t := string(tf[0])
			if !found || (Untrusted(t) && !Untrusted(typ)) || (Stacking(t) && !RootMount(id) && !Stacking(typ)) {
				typ, mid, found = t, id, true
			}
		}
		if found {
			return typ, mid, true
		}
	}
	return "", 0, false
}
