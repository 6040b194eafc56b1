// Package mountinfo tells which file system a file is on without asking that
// file system, and walks host paths without entering a mount whose server latch
// does not control (FUSE, network file systems: review 37, review 39).
//
// A file on FUSE is served by a process the daemon does not control, one on a
// network file system by another host: each lookup, open or stat there may be a
// request its server never answers, which holds the asking thread in the kernel
// uninterruptibly. Any user can put such a mount on a directory of theirs
// (fusermount3, or a user namespace), so the daemon must not walk a path a user
// may change into one. The kernel answers a statx with AT_STATX_DONT_SYNC from
// its cached attributes (FUSE and NFS send no request), and the mount id it
// gives names the file system type: statmount(2) by the unique id (Linux 6.8+),
// else its line in /proc/self/mountinfo.
package mountinfo

import (
	"bytes"
	"strconv"
	"strings"
)

// Untrusted reports whether fstype (a mountinfo type: "fuse.sshfs", "nfs4") is
// a file system whose files' attributes and bytes a server outside the kernel
// chooses, and which may stall whoever asks it: FUSE (any subtype, fuseblk) and
// the network file systems. An empty type (a mount latch cannot name) counts as
// such, as does a stacking type with why latch does not trust that mount
// ("overlay over fuse.sshfs", see StackedType: a type with a space).
func Untrusted(fstype string) bool {
	if fstype == "" || IsFUSE(fstype) || strings.Contains(fstype, " ") {
		return true
	}
	switch fstype {
	case "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "afs", "glusterfs", "lustre", "gfs2", "ocfs2", "davfs", "coda", "ncpfs",
		"virtiofs", "orangefs", "gpfs", "beegfs", "pvfs2", "cephfs", "ncp", "smb", "vboxsf", "vmhgfs", "prl_fs", "sshfs":
		return true
	}
	return false
}

// IsFUSE reports whether fstype is a FUSE file system (any subtype, fuseblk).
func IsFUSE(fstype string) bool {
	return fstype == "fuse" || fstype == "fuseblk" || strings.HasPrefix(fstype, "fuse.") || strings.HasPrefix(fstype, "fuseblk.")
}

// TypeOf finds the line of mount id in a mountinfo ("36 35 98:0 /a /b rw
// master:1 - ext4 /dev/root rw") and returns its file system type.
func TypeOf(b []byte, id uint64) (string, bool) {
	want := strconv.FormatUint(id, 10) + " "
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if !bytes.HasPrefix(line, []byte(want)) {
			continue
		}
		i := bytes.Index(line, []byte(" - "))
		if i < 0 {
			return "", false
		}
		f := bytes.Fields(line[i+3:])
		if len(f) == 0 {
			return "", false
		}
		return string(f[0]), true
	}
	return "", false
}
