//go:build linux

package e2e

import (
	"fmt"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
)

// TestFastPathUserNamespaceIsNotVerified (review28, fixed, medium-low): a
// program run in a user namespace of its own is not verified (README "Program
// identity": its root may point /proc/PID/exe at any program with
// prctl(PR_SET_MM_MAP, exe_fd) while running code of its own), so no --app rule
// matches it and the queue asks; the README's fast path section promises it
// "is asked through the queue every time". The kernel's key (executable file,
// mount, directory, socket uid, destination) has no user namespace in it, and
// `unshare -U` keeps the mount ids: once the verified program's allowed
// connect is cached, the same program in a user namespace of its own (here
// run from the very mount namespace, as any user can) is allowed in the
// kernel, at once, and the history records the fast path's decision instead
// of the question's default (identity "verified"). UDP alike: the UDP match
// keys the sending task the same way. Fixed: the kernel gives a task in another
// user namespace than the host's no identity (identify in fastpath.c), so the
// queue decides it.
func TestFastPathUserNamespaceIsNotVerified(t *testing.T) {
	userNamespaceNotVerified(t, 8392)
}

// TestQueueUserNamespaceIsNotVerified (review28, guard): the control of
// TestFastPathUserNamespaceIsNotVerified, without the fast path: the queue
// asks about the program in a user namespace of its own (not verified, no
// --app rule matches it) and the question's default refuses it.
func TestQueueUserNamespaceIsNotVerified(t *testing.T) {
	userNamespaceNotVerified(t, 8391, "--fast-path=false")
}

// userNamespaceNotVerified runs the test's scenario against a daemon with
// flags on port.
func userNamespaceNotVerified(t *testing.T, port int, flags ...string) {
	t.Helper()
	for _, tool := range []string{"unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	n := NewNet(t)
	n.Serve(t, port)
	udpPort := port + 100
	n.ServeUDP(t, udpPort)
	cg, cgfd := fastPathCgroup(t)
	d := n.StartDaemon(append([]string{"--default", "deny", "--prompt-timeout", "2s", "--fast-path-cgroup", cg}, flags...)...)
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--port", strconv.Itoa(port), "--action", "allow")
	d.MustCLI(t, "rules", "add", "--app", helperBin, "--proto", "udp", "--port", strconv.Itoa(udpPort), "--action", "allow")
	addr := fmt.Sprintf("%s:%d", n.ServerIP, port)

	// The verified program: decided by the rule through the queue, stored.
	tk := startTalk(t, n, cgfd)
	if r := tk.say(t, "open "+addr); r.Outcome != "connected" {
		t.Fatalf("the verified program's connect: %+v", r)
	}
	connsTo(t, d, port, 1)
	if len(flags) == 0 {
		d.waitFastPathOffers(t)
		if fp := d.fastPath(t); fp.Entries < 1 {
			t.Fatalf("not stored: %+v", fp)
		}
	}

	// The same program in a user namespace of its own, in the talker's mount
	// namespace (the mount ids of the kernel's key) and network namespace.
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(tk.cmd.Process.Pid), "-m", "-n", "--",
		"unshare", "-Ur", "--", helperBin, "connect", addr, "10s")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	r := results(t, string(out))[0]
	rows := connsTo(t, d, port, 2)
	if r.Outcome == "connected" || r.Millis < 1500 {
		t.Errorf("the program in a user namespace of its own: %+v; want held for the question (2s) and refused (not verified: no --app rule matches it)", r)
	}
	if len(rows) != 2 || rows[1]["reason"] != "timeout" || rows[1]["identity"] != "unverified" {
		t.Errorf("history: %v; want the verified program's row, then the unverified one's, asked (timeout)", rows)
	}

	// UDP: the UDP match keys the sending task the same way. The verified
	// program's exchange (in the talker's namespaces, the initial user
	// namespace) is decided by the rule and stored; then the same program's
	// in a user namespace of its own.
	uaddr := fmt.Sprintf("%s:%d", n.ServerIP, udpPort)
	udp := func(userns bool) Result {
		t.Helper()
		args := []string{"-t", strconv.Itoa(tk.cmd.Process.Pid), "-m", "-n", "--"}
		if userns {
			args = append(args, "unshare", "-Ur", "--")
		}
		cmd := exec.Command("nsenter", append(args, helperBin, "udp", uaddr, "5s")...)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
		return results(t, string(out))[0]
	}
	if r := udp(false); r.Outcome != "connected" {
		t.Fatalf("the verified program's UDP exchange: %+v", r)
	}
	connsTo(t, d, udpPort, 1)
	if len(flags) == 0 {
		d.waitFastPathOffers(t)
	}
	if r := udp(true); r.Outcome == "connected" {
		t.Errorf("the program in a user namespace of its own, UDP: %+v; want held for the question and refused", r)
	}
	if rows := connsTo(t, d, udpPort, 2); len(rows) != 2 || rows[1]["reason"] != "timeout" || rows[1]["identity"] != "unverified" {
		t.Errorf("UDP history: %v; want the verified program's row, then the unverified one's, asked (timeout)", rows)
	}
}
