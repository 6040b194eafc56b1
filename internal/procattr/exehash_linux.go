package procattr

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// hashKey identifies an executable's content without reading it: a file whose
// device, inode, modification time and size are unchanged is taken to hold the same
// bytes (a rewrite in place changes the time; a replacement the inode).
type hashKey struct {
	dev, ino uint64
	mtimeNs  int64
	size     int64
	changeNs int64 // ctime too: touch -d can set mtime back, not ctime
}

// exeHashes caches executables' SHA-256 by hashKey. A miss starts hashing in the
// background (at most maxHashing files at once) and reports "" now: the connection
// is decided without the hash (a pinned rule does not match it: latch asks rather
// than allows while hashing), and later connections get it.
type exeHashes struct {
	mu      sync.Mutex
	done    map[hashKey]string
	pending map[hashKey]bool
	sem     chan struct{}
}

const (
	maxHashing    = 2
	maxHashedExes = 4096
)

var hashes = &exeHashes{done: map[hashKey]string{}, pending: map[hashKey]bool{}, sem: make(chan struct{}, maxHashing)}

// exeHashKey stats the file process d executes.
func (d procDir) exeHashKey() (hashKey, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, "exe", &st, 0); err != nil {
		return hashKey{}, err
	}
	return hashKey{dev: uint64(st.Dev), ino: st.Ino, mtimeNs: st.Mtim.Nano(), size: st.Size, changeNs: st.Ctim.Nano()}, nil
}

// lookup returns the hash of the file with key k, or "" while it is not known; a
// miss starts hashing the file process pid executes.
func (h *exeHashes) lookup(k hashKey, pid int32) string {
	h.mu.Lock()
	if s, ok := h.done[k]; ok {
		h.mu.Unlock()
		return s
	}
	if h.pending[k] || k == (hashKey{}) {
		h.mu.Unlock()
		return ""
	}
	h.pending[k] = true
	h.mu.Unlock()
	go func() {
		h.sem <- struct{}{}
		sum, err := hashExe(pid, k)
		<-h.sem
		h.mu.Lock()
		delete(h.pending, k)
		if err == nil {
			if len(h.done) >= maxHashedExes {
				clear(h.done)
			}
			h.done[k] = sum
		}
		h.mu.Unlock()
	}()
	return ""
}

// hashExe hashes the file process pid executes, through /proc/PID/exe (the file
// itself, whatever its name), if it still is the file of key k.
func hashExe(pid int32, k hashKey) (string, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(int(pid)) + "/exe")
	if err != nil {
		return "", err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", err
	}
	if (hashKey{dev: uint64(st.Dev), ino: st.Ino, mtimeNs: st.Mtim.Nano(), size: st.Size, changeNs: st.Ctim.Nano()}) != k {
		return "", os.ErrNotExist // changed meanwhile: the next connection hashes again
	}
	hw := sha256.New()
	if _, err := io.Copy(hw, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(hw.Sum(nil)), nil
}
