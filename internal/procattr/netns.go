package procattr

// Netns names a network namespace: by the name `ip netns` gave it (a file in
// /run/netns), else as "net:[INODE]", the kernel's own name for it.
type Netns struct {
	Name  string
	inode uint64
	path  string // a file that opens it: /run/netns/NAME or /proc/PID/ns/net
}
