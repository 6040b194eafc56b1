// Package procattr tells which local process owns a connection, from the connection's
// 5-tuple: the process id, its executable, user and command line.
//
// On Linux a Resolver combines three methods, fastest first:
//
//   - sock_diag: one SOCK_DIAG_BY_FAMILY request for the exact 5-tuple (never a dump)
//     gives the socket's inode, owner uid and cookie. Every other method starts here.
//   - ebpf-cgroup: small eBPF programs on the cgroup v2 root's connect4/connect6,
//     udp4/udp6 sendmsg and bind4/bind6 hooks record, for every socket that connects,
//     sends or binds, its cookie → the pid, uid and comm of the thread that did it,
//     and (where the kernel's BTF and CAP_PERFMON allow reading the task) the start
//     time and exec id of its process, in an LRU hash map. Resolve looks the
//     sock_diag cookie up there.
//   - procfs: the last resort, for sockets the hooks never saw (made before the hooks
//     were attached, or a kernel without cgroup BPF): scan /proc/*/fd for
//     "socket:[INODE]", with a cache and a bounded rescan rate.
//
// DNS queries to a local resolver (latch's dnsproxy) have a fourth way
// (Resolver.WatchDNSQueries): a cgroup/skb egress program records, for each UDP
// datagram sent to the resolver's address, the ebpf-cgroup record of the socket that
// sent it under the datagram's source address, port and DNS id; DNSQueries.Resolve
// takes it with one map lookup-and-delete, and checks any record that does not
// identify its process exactly through sock_diag, against the sending socket's
// cookie.
//
// A Resolver never returns a wrong process: a pid is reported only after it has been
// shown to be the process that connected the socket (it started before the eBPF
// record was made, and is still alive; or the record carries the exact start time
// and exec id of a process already shown so, which no other process or image
// shares: such a lookup costs no system call besides sock_diag and the map lookup)
// or to hold the socket in its fd table, and
// the executable and command line are read through the same /proc/PID directory
// handle, which the kernel ties to the process rather than to the number: a pid that
// exits and is reused makes the reads fail instead of describing another program.
// When attribution fails, Resolve returns a Process with PID 0 and Exe "" and an
// error.
//
// Identity: a path is only what the process's own mount namespace calls its
// executable, so Process.Identity says whether it can be trusted. The file the
// process executes is stat'ed through /proc/PID/exe (the kernel follows the link to
// the file itself, whatever namespace, root or name the process sees), the path is
// stat'ed in the host's file system (process 1's root, or the Resolver's own where
// process 1 is out of reach) without following symbolic links,
// and only if both are the same file (device and inode) is the identity
// engine.IdentityVerified. Bind mounts, pivot_root, a chroot over a moved mount,
// deleted or replaced files and memfds all run a file that is not the host's file at
// the path, so none is verified; a process in a container runtime's cgroup and
// another mount namespace is engine.IdentityContainer, with the container's id. A
// cached process is reused only while it runs the same file (an exec of another file
// under the same name is seen), and the eBPF hooks record the inode of the
// executable that made each socket, so a socket made before an exec is not credited
// to the new image (the procfs method cannot tell: it sees only the image that runs
// when it looks). Where the hooks load without reading the executable (the
// kernel's BTF lacks a field, or its verifier refuses that program), no
// connection they attribute is verified; Resolver.ExeCheck says why.
//
// Namespaces: sock_diag sees the sockets of the network namespace NewResolver was
// called in; the hooks see every process on the host (they sit on the cgroup root)
// and record pids of the initial pid namespace, so they are used only when the
// Resolver runs in that namespace.
//
// Known limits: a socket bound to a device is found only when its interface index is
// given (ResolveDev); a process that execs its own executable again keeps, until it
// exits, the command line it had when first seen. UDP sockets sharing a port
// (SO_REUSEADDR, SO_REUSEPORT) are told apart only by ResolveSender, given the
// sending socket's cookie (latch's sender stash records it as the datagram
// passes the ruleset): Resolve and ResolveDev find the socket the kernel would
// deliver an answer to, the last bound, whichever sent; ResolveSender without a
// cookie attributes no program where the port is shared. The DNS copies
// (WatchDNSQueries aside) are attributed by tuple.
package procattr

import (
	"errors"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// Method names, as reported by Resolver.Methods and Process.Method.
const (
	MethodEBPF     = "ebpf-cgroup"
	MethodSockDiag = "sock_diag"
	MethodProcfs   = "procfs"
)

// Errors that Resolve wraps; test them with errors.Is.
var (
	// ErrUnsupported: the platform or the protocol cannot be attributed.
	ErrUnsupported = errors.New("process attribution not supported")
	// ErrNoSocket: no local socket has the 5-tuple (closed, or not a local connection).
	ErrNoSocket = errors.New("no socket with this 5-tuple")
	// ErrNoProcess: the socket exists but no live process could be shown to own it.
	ErrNoProcess = errors.New("no process owns the socket")
)

// Process describes the local process that owns a connection. The zero value means
// unknown.
type Process struct {
	PID     int32  `json:"pid"`               // thread group id; 0: unknown
	Exe     string `json:"exe"`               // /proc/PID/exe (without " (deleted)" unless verified); "": unknown
	UID     int32  `json:"uid"`               // owner of the socket; -1: unknown
	User    string `json:"user,omitempty"`    // account name of UID, "" if none
	Cmdline string `json:"cmdline,omitempty"` // arguments joined by spaces
	Comm    string `json:"comm,omitempty"`    // the kernel's short task name
	Method  string `json:"method,omitempty"`  // which method found the pid (MethodEBPF, MethodProcfs)
	// Identity says whether Exe is the host's name of the file the process runs
	// (engine.IdentityVerified), or not; see the package doc.
	Identity  engine.Identity `json:"identity"`
	Container string          `json:"container,omitempty"` // "RUNTIME:ID" for engine.IdentityContainer
	// ContainerName is the name docker or podman gives Container, from the runtime's
	// own state (see package containername); "" if none.
	ContainerName string        `json:"container_name,omitempty"`
	IdentityNote  string        `json:"identity_note,omitempty"` // why Identity is not verified
	Unit          string        `json:"unit,omitempty"`          // systemd system unit (cgroup under system.slice)
	AppID         string        `json:"app_id,omitempty"`        // flatpak or snap app id (cgroup name)
	Parents       []string      `json:"parents,omitempty"`       // ancestors' executables, parent first; "" where not verified
	ExeSHA256     string        `json:"exe_sha256,omitempty"`    // the executable's SHA-256 (hex); "" while it is being hashed
	ExeHashNote   string        `json:"exe_hash_note,omitempty"` // why ExeSHA256 is "" for good (too large to hash)
	ExeFile       engine.FileID `json:"-"`                       // the executable file as the kernel names it; zero: unknown
	// Cookie is the socket's cookie (sock_diag), whether or not its process
	// was found; 0: no socket found.
	Cookie uint64 `json:"-"`
}

// Options configure a Resolver. The zero value enables every method the kernel allows.
type Options struct {
	// DisableEBPF keeps the eBPF cgroup hooks off.
	DisableEBPF bool
	// DisableProcfs never scans /proc/*/fd.
	DisableProcfs bool
	// CgroupPath is the cgroup v2 directory the hooks attach to. "" finds the cgroup2
	// mount in /proc/self/mountinfo (its root covers every process).
	CgroupPath string
	// EBPFEntries is the size of the cookie → pid LRU map; 0 means 65536.
	EBPFEntries int
	// ProcfsRescanInterval is the least time between two full /proc scans; 0 means
	// 50ms. A socket not found while a rescan is not yet allowed is reported unknown.
	ProcfsRescanInterval time.Duration
	// SockDiagSockets is how many sock_diag lookups may run at once; 0 means 2.
	// The netlink sockets are opened by NewResolver, in the calling thread's network
	// namespace, which is the namespace whose sockets Resolve finds.
	SockDiagSockets int
}

// Stats count Resolve outcomes since the Resolver was made.
type Stats struct {
	EBPF      uint64 `json:"ebpf"`       // attributed by the eBPF record
	Procfs    uint64 `json:"procfs"`     // attributed by the /proc fd scan
	NoSocket  uint64 `json:"no_socket"`  // sock_diag found no socket
	NoProcess uint64 `json:"no_process"` // socket found, process unknown
	FullScans uint64 `json:"full_scans"` // full /proc scans made
}

func unknown() Process { return Process{UID: -1} }
