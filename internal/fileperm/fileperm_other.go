//go:build !unix

package fileperm

import "os"

// checkInfo: on Windows the files live in %ProgramData%\latch, whose ACL the service
// installation restricts; nothing is checked here.
func checkInfo(path string, st os.FileInfo) error { return nil }
