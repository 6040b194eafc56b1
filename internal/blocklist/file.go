package blocklist

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/latchfw/latch/internal/fileperm"
)

// MaxFileSize bounds a list: 64 MiB holds well over a million domains.
const MaxFileSize = 64 << 20

// ReadFile reads the list file at path for a client, with the rights of the user
// running it (the latch command line sends the contents; the daemon reads no file a
// client names). The file must be a regular file of at most MaxFileSize bytes: a
// FIFO, a device or a directory is an error, not a wait. Symbolic links are followed.
func ReadFile(path string) ([]byte, error) { return readRegular(path, clientOpenFlags) }

// readOwn reads a file for the daemon: as ReadFile, but a symbolic link is refused
// too.
func readOwn(path string) ([]byte, error) { return readRegular(path, daemonOpenFlags) }

// readOlder reads a list file an older latch's lists file names, with the daemon's
// (root's) rights, which a client may have named when the daemon still read its
// files (review 37): only where nobody but root could have chosen what it is — no
// symbolic link anywhere on the path, every directory root's and not open to
// others' writes, the file root's (fileperm.OpenTrusted). Any other is not read, and
// the error says to add the list again (the client then reads it with its user's
// rights).
func readOlder(path string) ([]byte, error) {
	f, err := fileperm.OpenTrusted(path)
	if err != nil {
		return nil, fmt.Errorf("%w; not read by the daemon: re-add the list with `latch lists add`", err)
	}
	defer f.Close()
	return readOpen(path, f)
}

func readRegular(path string, flags int) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|flags, 0)
	if errors.Is(err, syscall.ELOOP) && flags&noFollow != 0 {
		return nil, fmt.Errorf("%s: a symbolic link; a list must be a regular file", path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readOpen(path, f)
}

// readOpen reads the open file f (at path) if it is a regular file of at most
// MaxFileSize bytes.
func readOpen(path string, f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %s, not a regular file; a list must be a regular file", path, fileKind(st.Mode()))
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("%s: %d bytes, larger than %d", path, st.Size(), MaxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxFileSize)
	}
	return data, nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "a special file"
}
