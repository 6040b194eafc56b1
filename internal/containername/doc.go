// Package containername reads the names Docker and Podman give their containers from
// the runtimes' own state files, for the containers latch finds by cgroup path
// ("docker:ID", "podman:ID", and a user's own "docker@UID:ID", "podman@UID:ID", see
// procattr).
//
// Trust: a name of a system container (root's runtime) is read only from a regular
// file owned by root and writable by nobody else, reached from the file system root
// through directories owned by root that only root may write, without following a
// symbolic link:
//
//	docker  /var/lib/docker/containers/ID/config.v2.json  field "Name" (its "/" dropped)
//	podman  /var/lib/containers/storage/DRIVER-containers/containers.json
//	        (and volatile-containers.json, where `podman run --rm` keeps its
//	        containers; and both under the run root /run/containers/storage,
//	        where a transient store keeps them)   "names"[0] of the entry with "id" ID
//
// A user's own (rootless) container's name comes from the same files under that
// user's home directory (~/.local/share/docker, ~/.local/share/containers/storage;
// podman's run root /run/user/UID/containers), owned by the user, through
// directories owned by root or that user and writable by no one else. That name is the user's claim, like the container's id (the user's
// programs chose both): it is reported for the "RUNTIME@UID:ID" label only, which
// no rule for a system container matches.
//
// No name is read through a FUSE or network mount (one a user put at ~/.local, say):
// the walk tells each component's file system from its mount id before asking
// anything of it (mountinfo.Walk), as such a server may never answer.
//
// The paths are read in the calling process's own view of the file system (Root):
// in the daemon, its mount namespace, which the packaged unit leaves showing the
// host's /var/lib and /home (read-only).
//
// Only the default locations are read (not a data-root or graphroot moved in
// daemon.json or storage.conf). Names are untrusted text: shown escaped in text
// output, exact in JSON.
//
// Cost: a Reader caches each state file with its identity (device, inode, size,
// mtime, ctime) and looks at it again at most once per Interval; it is read again
// only when that identity changed. From a user's own file only the first
// MaxUserNames names are kept, and none from one larger than MaxUserFileSize
// (that user may fill and rewrite it at will). A lookup between checks is a map lookup (a
// label's answer is kept until the oldest file it came from is due). A file
// that is missing (no such runtime) is remembered as missing the same way. At most
// one goroutine refreshes a file at a time; others use what was cached meanwhile.
package containername
