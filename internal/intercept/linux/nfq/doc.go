// Package nfq speaks the netfilter NFQUEUE protocol (nfnetlink_queue) over a netlink
// socket: bind a queue, read the packets the kernel holds in it, and set their verdicts
// from any goroutine. It is Linux only; on other systems the package is empty.
package nfq
