//go:build !linux

package main

import (
	"fmt"
	"runtime"
)

// memfdExec needs memfd_create, which only Linux has.
func memfdExec(args []string) {
	fatal(fmt.Errorf("memfd-exec: not supported on %s", runtime.GOOS))
}

// udpConnectExec needs Linux's dup3 and exec.
func udpConnectExec(addr, prog, timeout string) {
	fatal(fmt.Errorf("udp-connect-exec: not supported on %s", runtime.GOOS))
}
