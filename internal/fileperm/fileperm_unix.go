//go:build unix

package fileperm

import (
	"fmt"
	"os"
	"syscall"
)

func checkInfo(path string, st os.FileInfo) error {
	if st.Mode().Perm()&0o022 != 0 {
		return describe(path, st, "group or others may write it")
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		if s.Uid != 0 && int(s.Uid) != os.Geteuid() {
			return describe(path, st, fmt.Sprintf("owned by uid %d, neither root nor the user running latch", s.Uid))
		}
	}
	return nil
}
