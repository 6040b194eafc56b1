//go:build !linux

package main

import (
	"fmt"
	"net"
	"runtime"
	"time"
)

// reopen needs Linux's connect(AF_UNSPEC) on a TCP socket.
func reopen(c *net.TCPConn, addr string, timeout time.Duration) Result {
	fatal(fmt.Errorf("talk reopen: not supported on %s", runtime.GOOS))
	return Result{}
}
