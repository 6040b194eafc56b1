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

// masquerade points this process's executable (mm->exe_file) at target, as
// CRIU restores a process: the maps of the file it runs go first.
int masquerade(const char *target, const char *ip, int port)
{
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
	int exe = open(target, O_RDONLY);
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
