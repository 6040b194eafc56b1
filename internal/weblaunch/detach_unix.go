//go:build unix

package weblaunch

import (
	"os/exec"
	"syscall"
)

// detach runs cmd in a session of its own.
func detach(cmd *exec.Cmd) { cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} }
