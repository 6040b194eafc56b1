package mountinfo

import (
	"bytes"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// statmount(2) (Linux 6.8+; include/uapi/linux/mount.h), which x/sys does not
// wrap yet.
const (
	statmountSBBasic   = 0x1   // STATMOUNT_SB_BASIC: sb_dev_major, sb_dev_minor ...
	statmountFSType    = 0x20  // STATMOUNT_FS_TYPE
	statmountMntOpts   = 0x80  // STATMOUNT_MNT_OPTS (Linux 6.11+)
	statmountFSSubtype = 0x100 // STATMOUNT_FS_SUBTYPE (Linux 6.15+)
	mntIDReqSize       = 32    // MNT_ID_REQ_SIZE_VER1: with mnt_ns_id (Linux 6.11+)
	// nsGetMntnsID is NS_GET_MNTNS_ID, _IOR(0xb7, 5, __u64) (Linux 6.11+).
	nsGetMntnsID = 0x8008b705
	// Offsets in struct statmount.
	smMntOpts   = 4
	smMask      = 8
	smSBDev     = 16 // sb_dev_major, sb_dev_minor
	smFSType    = 36
	smFSSubtype = 120
	smStr       = 512 // str[]: the strings the fields above give offsets into
)

// mntIDReq is struct mnt_id_req.
type mntIDReq struct {
	size    uint32
	spare   uint32
	mntID   uint64
	param   uint64
	mntNsID uint64
}

// ErrNoStatmount says that the kernel has no statmount(2) (before Linux 6.8).
var ErrNoStatmount = errors.New("the kernel has no statmount")

// StatmountType returns the file system type, as mountinfo names it
// ("fuse.sshfs", "ext4"), of the mount whose unique id (STATX_MNT_ID_UNIQUE) is
// mnt, in the mount namespace whose id is nsID (0: the caller's; see
// NamespaceID), asked of the kernel (statmount(2)), without reading a mount
// table: its cost does not grow with the table. ErrNoStatmount where the kernel
// has none; an error wrapping ENOENT where that namespace has no such mount.
func StatmountType(mnt, nsID uint64) (string, error) {
	t, _, _, err := statmountDev(mnt, nsID, false)
	return t, err
}

// StatmountOpts returns the type and the mount options (comma separated,
// escaped as in mountinfo) of the mount as StatmountType, or an error where the
// kernel gives no options (before Linux 6.11).
func StatmountOpts(mnt, nsID uint64) (string, string, error) {
	return statmount(mnt, nsID, true)
}

func statmount(mnt, nsID uint64, opts bool) (string, string, error) {
	t, o, _, err := statmountDev(mnt, nsID, opts)
	return t, o, err
}

// statmountDev is statmount giving also the device of the mount's super block
// (its st_dev: major, minor), [0, 0] where the kernel gives none.
func statmountDev(mnt, nsID uint64, opts bool) (string, string, [2]uint32, error) {
	var dev [2]uint32
	t, o, err := func() (string, string, error) {
		req := mntIDReq{size: mntIDReqSize, mntID: mnt, param: statmountSBBasic | statmountFSType | statmountFSSubtype, mntNsID: nsID}
		if opts {
			req.param |= statmountMntOpts
		}
		buf := make([]uint64, 1024) // 8 KiB, aligned; more for long options
		var b []byte
		for {
			b = unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), len(buf)*8)
			_, _, e := unix.Syscall6(unix.SYS_STATMOUNT, uintptr(unsafe.Pointer(&req)), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(b)), 0, 0, 0)
			switch e {
			case 0:
			case unix.EINTR:
				continue
			case unix.EOVERFLOW:
				if len(buf) < 1<<17 { // grows to at most 2 MiB
					buf = make([]uint64, len(buf)*4)
					continue
				}
				return "", "", fmt.Errorf("statmount of mount %d: %w", mnt, e)
			case unix.ENOSYS:
				return "", "", ErrNoStatmount
			case unix.EINVAL:
				if req.param&statmountFSSubtype != 0 {
					// A kernel that refuses the subtype it does not know.
					req.param &^= statmountFSSubtype
					continue
				}
				return "", "", fmt.Errorf("statmount of mount %d: %w", mnt, e)
			default:
				return "", "", fmt.Errorf("statmount of mount %d: %w", mnt, e)
			}
			break
		}
		mask := *(*uint64)(unsafe.Pointer(&b[smMask]))
		if mask&statmountFSType == 0 {
			return "", "", fmt.Errorf("statmount of mount %d: no file system type given", mnt)
		}
		str := func(field int) string {
			off := smStr + int(*(*uint32)(unsafe.Pointer(&b[field])))
			if off >= len(b) {
				return ""
			}
			s := b[off:]
			if i := bytes.IndexByte(s, 0); i >= 0 {
				s = s[:i]
			}
			return string(s)
		}
		t := str(smFSType)
		if t == "" {
			return "", "", fmt.Errorf("statmount of mount %d: an empty file system type", mnt)
		}
		if mask&statmountFSSubtype != 0 {
			if sub := str(smFSSubtype); sub != "" {
				t += "." + sub
			}
		}
		o := ""
		if opts {
			if mask&statmountMntOpts == 0 {
				// Also a mount whose file system shows no options.
				return t, "", fmt.Errorf("statmount of mount %d: no mount options given", mnt)
			}
			o = str(smMntOpts)
		}
		if mask&statmountSBBasic != 0 {
			dev[0] = *(*uint32)(unsafe.Pointer(&b[smSBDev]))
			dev[1] = *(*uint32)(unsafe.Pointer(&b[smSBDev+4]))
		}
		return t, o, nil
	}()
	return t, o, dev, err
}

// NamespaceID returns the id of the mount namespace nsfd (an open
// /proc/PID/ns/mnt) is, for StatmountType (NS_GET_MNTNS_ID, Linux 6.11+).
func NamespaceID(nsfd int) (uint64, error) {
	var id uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(nsfd), nsGetMntnsID, uintptr(unsafe.Pointer(&id))); e != 0 {
		return 0, fmt.Errorf("NS_GET_MNTNS_ID: %w", e)
	}
	return id, nil
}
