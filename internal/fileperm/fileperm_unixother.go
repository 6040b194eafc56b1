//go:build unix && !linux

package fileperm

import (
	"fmt"
	"os"
)

// openTrusted is Linux's only (O_PATH, mount ids); latch runs on Linux and
// Windows.
func openTrusted(path string) (*os.File, error) {
	return nil, fmt.Errorf("%s: opening a trusted file is not supported on this system", path)
}
