package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// memfdExec runs args (a verb and its arguments) from a memfd copy of this
// executable: a program no file system path names.
func memfdExec(args []string) {
	fd, err := unix.MemfdCreate("latch-e2e", 0)
	if err != nil {
		fatal(fmt.Errorf("memfd_create: %w", err))
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		fatal(err)
	}
	for b := self; len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err != nil {
			fatal(fmt.Errorf("write memfd: %w", err))
		}
		b = b[n:]
	}
	argv := append([]string{"e2ehelper"}, args...)
	fatal(unix.Exec(fmt.Sprintf("/proc/self/fd/%d", fd), argv, os.Environ()))
}
