// masquerade (review28): a program that, in a user namespace of its own
// (where its root holds CAP_CHECKPOINT_RESTORE), names another program as its
// executable with prctl(PR_SET_MM, PR_SET_MM_MAP, exe_fd), as CRIU restores a
// process, then connects: main (main.c) calls masquerade in this library,
// which unmaps main's own file (the kernel refuses a new exe_file while the
// old one is mapped) and never returns to it. Built with -z now: a lazy
// binding would read main's unmapped symbol tables. Usage: masq TARGET IPV4 PORT;
// prints "ok MARK EXE" or "err ERRNO MARK EXE" after the connect, as the
// fast path test client does, or "err WHAT ERRNO" if a step failed. With
// MASQ_CLONE_VM=1 in its environment the process stays in the initial user
// namespace: a child it clones with CLONE_VM | CLONE_NEWUSER, sharing its
// memory (mm, with mm->exe_file) and holding CAP_CHECKPOINT_RESTORE in a user
// namespace of its own, makes the call for it.
//
// With MASQ_BINFMT=1 as well, the file it names is not one it opened but one
// the kernel opened to execute the target (with __FMODE_EXEC, as execve's):
// a process in a user namespace of its own (host's mounts) registers, in the
// binfmt_misc instance of that namespace (mounted by a child in a mount
// namespace of its own; Linux 6.7+), an entry with the O flag for names ending
// in .masqx, and executes a link so named to the target: the interpreter (this
// program again, see send_execfd) gets a descriptor of the target (AT_EXECFD),
// opened for execve in the host's mount namespace, and sends it back.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/prctl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/auxv.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <linux/stat.h>

static void die(const char *what) { printf("err %s %d\n", what, errno); fflush(stdout); _exit(1); }

static struct prctl_mm_map shared_map;
static int child_err = -1;
static char child_stack[65536] __attribute__((aligned(16)));

// set_map runs in the CLONE_VM child: the prctl on the shared mm.
static int set_map(void *unused)
{
	(void)unused;
	child_err = prctl(PR_SET_MM, PR_SET_MM_MAP, (unsigned long)&shared_map, sizeof shared_map, 0) != 0 ? errno : 0;
	syscall(SYS_exit, 0);
	return 0;
}

// MASQ_REUSE_MNT (review33): the mount id the hooks recorded for this
// program's own executable is freed (the test unmounts its file system once the
// executable is named away and its maps are gone) and given, lowest free id
// first, to a bind mount of the target that a CLONE_VM | CLONE_NEWUSER |
// CLONE_NEWNS child (made before the connect, so its namespace's copies of the
// host's mounts are made then) makes in a mount namespace of its own; that
// child names the target, reached through the bind mount, as the executable,
// and keeps its namespace alive until this process ends.
static struct prctl_mm_map reuse_map;
static const char *reuse_target;
static unsigned long long reuse_want, reuse_got;
static int reuse_err = -1, reuse_go[2], reuse_done[2];
static char reuse_stack[65536] __attribute__((aligned(16)));

static unsigned long long mnt_id_of(const char *path)
{
	struct statx sx;
	memset(&sx, 0, sizeof sx);
	if (syscall(SYS_statx, AT_FDCWD, path, 0, STATX_MNT_ID, &sx) != 0 || !(sx.stx_mask & STATX_MNT_ID))
		return 0;
	return sx.stx_mnt_id;
}

static int reuse_child(void *unused)
{
	(void)unused;
	char c;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (read(reuse_go[0], &c, 1) != 1)
		syscall(SYS_exit, 0);
	int err = 0;
	// Bind mounts of the target over itself until the top one has the id
	// wanted: every allocation takes the lowest free id, so one below it
	// fills a hole and the next tries again; the freed id may take an RCU
	// grace period to come back.
	for (int i = 0; i < 400; i++) {
		if (mount(reuse_target, reuse_target, NULL, MS_BIND, NULL) != 0) { err = errno; break; }
		reuse_got = mnt_id_of(reuse_target);
		if (reuse_got == reuse_want)
			break;
		if (reuse_got > reuse_want)
			usleep(5000);
	}
	if (err == 0) {
		int fd = open(reuse_target, O_RDONLY);
		if (fd < 0) err = errno;
		else {
			reuse_map.exe_fd = fd;
			if (prctl(PR_SET_MM, PR_SET_MM_MAP, (unsigned long)&reuse_map, sizeof reuse_map, 0) != 0) err = errno;
			close(fd);
		}
	}
	reuse_err = err;
	if (write(reuse_done[1], "d", 1) != 1) err = errno;
	for (;;)
		pause();
	return 0;
}

// send_execfd runs first in every process of this program: as binfmt_misc's
// interpreter (MASQ_SENDFD names the socket) it sends the descriptor of the
// program executed (AT_EXECFD) and exits.
__attribute__((constructor)) static void send_execfd(void)
{
	const char *sock = getenv("MASQ_SENDFD");
	if (!sock)
		return;
	int s = atoi(sock);
	int fd = (int)getauxval(AT_EXECFD);
	char c = fd > 0 ? 'y' : 'n';
	struct iovec iov = {&c, 1};
	char ctl[CMSG_SPACE(sizeof(int))];
	memset(ctl, 0, sizeof ctl);
	struct msghdr mh = {0};
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (fd > 0) {
		mh.msg_control = ctl;
		mh.msg_controllen = sizeof ctl;
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	sendmsg(s, &mh, 0);
	_exit(0);
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) die(path);
	close(fd);
}

// exec_fd returns a descriptor of target opened by the kernel for execve
// (binfmt_misc's O flag), in this mount namespace: see MASQ_BINFMT.
static int exec_fd(const char *target, const char *self)
{
	char dir[] = "/tmp/masqXXXXXX";
	if (!mkdtemp(dir)) die("mkdtemp");
	char link[256], mnt[256];
	snprintf(link, sizeof link, "%s/t.masqx", dir);
	snprintf(mnt, sizeof mnt, "%s/mnt", dir);
	if (symlink(target, link) != 0) die("symlink");
	if (mkdir(mnt, 0700) != 0) die("mkdir");
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0) die("socketpair");
	int uid = getuid(), gid = getgid();
	pid_t pid = fork();
	if (pid < 0) die("fork");
	if (pid == 0) {
		// A user namespace of its own, the host's mounts.
		if (unshare(CLONE_NEWUSER) != 0) die("unshare user");
		char map[64];
		write_file("/proc/self/setgroups", "deny");
		snprintf(map, sizeof map, "0 %d 1", uid);
		write_file("/proc/self/uid_map", map);
		snprintf(map, sizeof map, "0 %d 1", gid);
		write_file("/proc/self/gid_map", map);
		int ready[2];
		if (pipe(ready) != 0) die("pipe");
		pid_t reg = fork();
		if (reg < 0) die("fork reg");
		if (reg == 0) {
			// The namespace's binfmt_misc instance, in a mount namespace of
			// its own; it lives while this process does, which ends with its
			// parent (the interpreter's exit) and holds none of the output.
			if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die("pdeathsig");
			int null = open("/dev/null", O_RDWR);
			if (null < 0) die("/dev/null");
			if (getppid() == 1) _exit(0);
			if (unshare(CLONE_NEWNS) != 0) die("unshare mnt");
			if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("make private");
			if (mount("binfmt_misc", mnt, "binfmt_misc", 0, NULL) != 0) die("mount binfmt_misc");
			char reg[600], path[300];
			snprintf(reg, sizeof reg, ":masqx:E::masqx::%s:OF", self);
			snprintf(path, sizeof path, "%s/register", mnt);
			write_file(path, reg);
			if (write(ready[1], "r", 1) != 1) die("ready");
			dup2(null, 1);
			dup2(null, 2);
			pause();
			_exit(0);
		}
		char c;
		if (read(ready[0], &c, 1) != 1) _exit(1);
		char fdtext[16];
		snprintf(fdtext, sizeof fdtext, "%d", sv[1]);
		setenv("MASQ_SENDFD", fdtext, 1);
		char *argv[] = {link, "x", "y", "z", NULL};
		execv(link, argv);
		kill(reg, SIGKILL);
		die("execv link");
	}
	char c;
	struct iovec iov = {&c, 1};
	char ctl[CMSG_SPACE(sizeof(int))];
	struct msghdr mh = {0};
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = ctl;
	mh.msg_controllen = sizeof ctl;
	if (recvmsg(sv[0], &mh, 0) != 1 || c != 'y') die("recv execfd");
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	if (!cm || cm->cmsg_type != SCM_RIGHTS) die("no execfd");
	int fd;
	memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	kill(pid, SIGKILL); // the interpreter exits; the registering child is its
	waitpid(pid, NULL, 0);
	unlink(link);
	rmdir(mnt);
	rmdir(dir);
	return fd;
}

// own_fs (MASQ_OWN_FS, review33) is what an unprivileged user does to run
// this program from a file system of their own, in the host's user and mount
// namespaces: a child makes a user and mount namespace, mounts a tmpfs there,
// makes a file "pad" then a copy of this program "masq" in it (so the copy has
// the inode number a fresh tmpfs gives its second file) and sends the
// directory's descriptor back; this process then executes the copy through
// it (execveat) with MASQ_OWN_FS taken out of the environment. The child
// exits: its namespace goes, and the tmpfs's mount lives on only while this
// process holds it (its executable, its maps). Returns only on failure.
static void own_fs(char **argv)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0) die("socketpair own");
	int uid = getuid(), gid = getgid();
	pid_t pid = fork();
	if (pid < 0) die("fork own");
	if (pid == 0) {
		if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) die("unshare own");
		char map[64];
		write_file("/proc/self/setgroups", "deny");
		snprintf(map, sizeof map, "0 %d 1", uid);
		write_file("/proc/self/uid_map", map);
		snprintf(map, sizeof map, "0 %d 1", gid);
		write_file("/proc/self/gid_map", map);
		if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("make private own");
		if (mount("tmpfs", "/tmp", "tmpfs", 0, "mode=0755") != 0) die("mount own tmpfs");
		int d = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (d < 0) die("open own tmpfs");
		int pad = openat(d, "pad", O_CREAT | O_WRONLY | O_CLOEXEC, 0755);
		if (pad < 0) die("create pad");
		close(pad);
		int in = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
		int out = openat(d, "masq", O_CREAT | O_WRONLY | O_CLOEXEC, 0755);
		if (in < 0 || out < 0) die("copy own");
		char b[65536];
		ssize_t r;
		while ((r = read(in, b, sizeof b)) > 0)
			if (write(out, b, r) != r) die("write own");
		close(in);
		close(out);
		char c = 'y';
		struct iovec iov = {&c, 1};
		char ctl[CMSG_SPACE(sizeof(int))];
		memset(ctl, 0, sizeof ctl);
		struct msghdr mh = {0};
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = ctl;
		mh.msg_controllen = sizeof ctl;
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &d, sizeof(int));
		if (sendmsg(sv[1], &mh, 0) != 1) die("send own");
		_exit(0);
	}
	char c;
	struct iovec iov = {&c, 1};
	char ctl[CMSG_SPACE(sizeof(int))];
	struct msghdr mh = {0};
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = ctl;
	mh.msg_controllen = sizeof ctl;
	if (recvmsg(sv[0], &mh, MSG_CMSG_CLOEXEC) != 1 || c != 'y') die("recv own");
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	if (!cm || cm->cmsg_type != SCM_RIGHTS) die("no own fd");
	int d;
	memcpy(&d, CMSG_DATA(cm), sizeof(int));
	waitpid(pid, NULL, 0);
	close(sv[0]);
	close(sv[1]);
	unsetenv("MASQ_OWN_FS");
	extern char **environ;
	syscall(SYS_execveat, d, "masq", argv, environ, 0);
	die("execveat own");
}

// masquerade points this process's executable (mm->exe_file) at target, as
// CRIU restores a process: the maps of the file it runs go first.
int masquerade(const char *target, const char *ip, int port, char **argv)
{
	if (getenv("MASQ_OWN_FS"))
		own_fs(argv);
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n < 0) die("readlink");
	self[n] = 0;
	char buf[4096];
	int fd = open("/proc/self/stat", O_RDONLY);
	if (fd < 0) die("stat");
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0) die("read stat");
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	if (!p) die("parse stat");
	p += 2; // state is field 3
	unsigned long long f[64] = {0};
	int i = 3;
	while (*p && i < 64) {
		f[i] = strtoull(p, &p, 10);
		if (i == 3) { p = strchr(p, ' '); }
		while (*p == ' ') p++;
		i++;
	}
	struct prctl_mm_map m;
	memset(&m, 0, sizeof m);
	m.start_code = f[26]; m.end_code = f[27]; m.start_stack = f[28];
	m.start_data = f[45]; m.end_data = f[46]; m.start_brk = f[47];
	m.arg_start = f[48]; m.arg_end = f[49]; m.env_start = f[50]; m.env_end = f[51];
	m.brk = syscall(SYS_brk, 0);
	int reuse = getenv("MASQ_REUSE_MNT") != NULL;
	if (reuse) {
		reuse_want = mnt_id_of("/proc/self/exe");
		if (reuse_want == 0) die("statx own exe");
		reuse_target = target;
		reuse_map = m;
		if (pipe(reuse_go) != 0 || pipe(reuse_done) != 0) die("pipe reuse");
		int pid = clone(reuse_child, reuse_stack + sizeof reuse_stack, CLONE_VM | CLONE_NEWUSER | CLONE_NEWNS | SIGCHLD, 0);
		if (pid < 0) die("clone reuse");
	}
	int exe = getenv("MASQ_BINFMT") ? exec_fd(target, self) : open(target, O_RDONLY);
	if (exe < 0) die("open target");
	m.exe_fd = exe;
	// Everything needed after the maps go is ready now.
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	inet_pton(AF_INET, ip, &sa.sin_addr);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0) die("socket");
	// MASQ_CONNECT_FIRST (review32): connect now, running this program (the
	// hooks' record: its inode number, __FMODE_EXEC), name the target after,
	// then report the socket's local address and hold it until stdin closes.
	int first = getenv("MASQ_CONNECT_FIRST") != NULL;
	int first_r = 0, first_e = 0;
	if (first) {
		fcntl(s, F_SETFL, O_NONBLOCK);
		first_r = connect(s, (struct sockaddr *)&sa, sizeof sa);
		first_e = errno;
	}
	// The maps of this process's own executable.
	FILE *maps = fopen("/proc/self/maps", "r");
	if (!maps) die("maps");
	unsigned long lo[32], hi[32];
	int k = 0;
	char line[8192];
	while (k < 32 && fgets(line, sizeof line, maps)) {
		char *path = strchr(line, '/');
		if (!path) continue;
		path[strcspn(path, "\n")] = 0;
		if (strcmp(path, self) != 0) continue;
		sscanf(line, "%lx-%lx", &lo[k], &hi[k]);
		k++;
	}
	fclose(maps);
	for (int j = 0; j < k; j++)
		if (munmap((void *)lo[j], hi[j] - lo[j]) != 0) die("munmap");
	if (getenv("MASQ_CLONE_VM")) {
		shared_map = m;
		int pid = clone(set_map, child_stack + sizeof child_stack, CLONE_VM | CLONE_NEWUSER | SIGCHLD, 0);
		if (pid < 0) die("clone");
		int st;
		waitpid(pid, &st, 0);
		if (child_err != 0) {
			errno = child_err;
			die("prctl");
		}
	} else if (prctl(PR_SET_MM, PR_SET_MM_MAP, (unsigned long)&m, sizeof m, 0) != 0) die("prctl");
	if (first) {
		struct sockaddr_in la;
		socklen_t ll = sizeof la;
		getsockname(s, (struct sockaddr *)&la, &ll);
		char ip4[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &la.sin_addr, ip4, sizeof ip4);
		n = readlink("/proc/self/exe", self, sizeof self - 1);
		self[n > 0 ? n : 0] = 0;
		if (first_r != 0 && first_e != EINPROGRESS) { errno = first_e; die("connect"); }
		printf("ok %s:%d %s\n", ip4, ntohs(la.sin_port), self);
		fflush(stdout);
		char c;
		if (reuse) {
			close(exe);
			// The test unmounts this program's file system, then says go.
			if (read(0, &c, 1) != 1) _exit(0);
			if (write(reuse_go[1], "g", 1) != 1) die("write go");
			if (read(reuse_done[0], &c, 1) != 1) die("read done");
			n = readlink("/proc/self/exe", self, sizeof self - 1);
			self[n > 0 ? n : 0] = 0;
			printf("reused %llu %llu %d %s\n", reuse_want, reuse_got, reuse_err, self);
			fflush(stdout);
		}
		while (read(0, &c, 1) > 0)
			;
		_exit(0);
	}
	int r = connect(s, (struct sockaddr *)&sa, sizeof sa);
	int e = errno;
	int mark = 0;
	socklen_t ml = sizeof mark;
	getsockopt(s, SOL_SOCKET, SO_MARK, &mark, &ml);
	n = readlink("/proc/self/exe", self, sizeof self - 1);
	self[n > 0 ? n : 0] = 0;
	if (r == 0) printf("ok 0x%x %s\n", mark, self);
	else printf("err %d 0x%x %s\n", e, mark, self);
	fflush(stdout);
	_exit(0);
}
