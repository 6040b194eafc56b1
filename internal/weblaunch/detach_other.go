//go:build !unix

package weblaunch

import "os/exec"

func detach(*exec.Cmd) {}
