// Package fileperm checks that a file that steers the firewall (the configuration
// file, a managed rule file) can be changed only by root, as sshd's StrictModes does:
// otherwise a local user could write "fail = open" or an allow-everything rule. The
// directories above it count too: whoever may rename an entry of one of them may put
// another file or directory in the trusted one's place.
package fileperm

import (
	"fmt"
	"os"
)

// CheckTrusted returns an error if the file or directory at path may be written by
// someone other than root and the user running latch: its owner is another user, or
// group or others have write permission. A symbolic link is followed (its target
// is what is read).
func CheckTrusted(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkInfo(path, st)
}

func describe(path string, st os.FileInfo, why string) error {
	return fmt.Errorf("%s (mode %04o): %s; refusing it, as it steers the firewall (chown root and chmod go-w it)", path, st.Mode().Perm(), why)
}

// CheckFileInfo is CheckTrusted for a file already opened and stat'ed (no race
// between the check and the read).
func CheckFileInfo(path string, st os.FileInfo) error { return checkInfo(path, st) }

// CheckParents returns an error if a directory above path (every one up to /) may be
// changed by someone other than root and the user running latch: it belongs to
// another user, or group or others may write it and it is not a sticky directory of
// root's (such as /tmp, where no one may rename another's entries). A symbolic link
// on the way must belong to root or the user running latch, and the directories
// above its target are checked too. path itself is not checked (CheckTrusted,
// CheckFileInfo); it, and directories on the way, need not exist: nobody else can
// create them where every existing directory is trusted.
func CheckParents(path string) error { return checkParents(path) }

// OpenTrusted opens the file at path (absolute) for reading with root's rights only
// where no one else could have chosen what it is: path is walked from / one
// component at a time (openat with O_NOFOLLOW), so no symbolic link is followed
// anywhere on it; every directory on the way must pass CheckParents' rule and the
// file must belong to root or the user running latch. A FIFO is opened without
// waiting (O_NONBLOCK) and a terminal never becomes the controlling one: the caller
// checks what kind of file it got.
func OpenTrusted(path string) (*os.File, error) { return openTrusted(path) }
