//go:build !linux

package main

import (
	"fmt"
	"net"
	"runtime"
	"time"
)

// reopen needs Linux's connect(AF_UNSPEC) on a TCP socket.
func reopen(c *net.TCPConn, port int, addr string, timeout time.Duration) Result {
	fatal(fmt.Errorf("talk reopen/simopen: not supported on %s", runtime.GOOS))
	return Result{}
}

// v6only needs Linux's sockets.
func v6only(addr string) (*net.TCPConn, Result) {
	fatal(fmt.Errorf("talk v6only: not supported on %s", runtime.GOOS))
	return nil, Result{}
}

// simopenPeer is talk simopen's other side.
func simopenPeer(local, remote string, dur time.Duration) Result {
	fatal(fmt.Errorf("simopen-peer: not supported on %s", runtime.GOOS))
	return Result{}
}

// connectSRH needs Linux's IPV6_RTHDR.
func connectSRH(addr, via string, timeout time.Duration) Result {
	fatal(fmt.Errorf("connect-srh: not supported on %s", runtime.GOOS))
	return Result{}
}

// setSRH needs Linux's IPV6_RTHDR.
func setSRH(c *net.TCPConn, via string) Result {
	fatal(fmt.Errorf("talk srh: not supported on %s", runtime.GOOS))
	return Result{}
}

// pending needs Linux's TCP_SYNCNT.
func pending(addr string) (*net.TCPConn, Result) {
	fatal(fmt.Errorf("talk pending: not supported on %s", runtime.GOOS))
	return nil, Result{}
}
