package main

import (
	"fmt"
	"os"
	"syscall"

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

// udpConnectExec connects a UDP socket to addr and, sending nothing, executes prog
// ("send-fd-now" TIMEOUT) with the socket as fd 3: the datagram is sent by
// whatever program prog is, on a socket this one connected.
func udpConnectExec(addr, prog, timeout string) {
	fd := int(connectedUDP4("udp-connect-exec", addr).Fd())
	if fd != 3 {
		if err := syscall.Dup3(fd, 3, 0); err != nil {
			fatal(err)
		}
	}
	fatal(syscall.Exec(prog, []string{prog, "send-fd-now", addr, timeout}, os.Environ()))
}
