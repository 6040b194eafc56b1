package winsvc

import (
	"bytes"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		args []string
		want command
	}{
		{[]string{"install"}, command{verb: "install", name: ServiceName, driver: DriverServiceName, daemonArgs: []string{}}},
		{[]string{"install", "--name", "latch2", "--driver", "", "--manual", "--", "--default", "deny", "--prompt-timeout", "20s"},
			command{verb: "install", name: "latch2", manual: true, daemonArgs: []string{"--default", "deny", "--prompt-timeout", "20s"}}},
		{[]string{"uninstall"}, command{verb: "uninstall", name: ServiceName}},
		{[]string{"start", "--name=x"}, command{verb: "start", name: "x"}},
		{[]string{"stop"}, command{verb: "stop", name: ServiceName}},
		{[]string{"status"}, command{verb: "status", name: ServiceName}},
		{[]string{"help"}, command{verb: "help"}},
	} {
		got, err := parse(c.args, io.Discard)
		if err != nil {
			t.Errorf("parse(%q): %v", c.args, err)
			continue
		}
		if got.daemonArgs == nil && c.want.daemonArgs != nil {
			got.daemonArgs = []string{}
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("parse(%q) = %+v, want %+v", c.args, got, c.want)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "missing command"},
		{[]string{"restart"}, `unknown command "restart"`},
		{[]string{"start", "extra"}, `unexpected argument "extra"`},
		{[]string{"stop", "--driver", "x"}, "flag provided but not defined: -driver"},
		{[]string{"start", "--name", ""}, `--name ""`},
		{[]string{"start", "--name", `a\b`}, `--name "a\\b"`},
		{[]string{"install", "--driver", "a/b"}, `--driver "a/b"`},
		{[]string{"install", "--name", "latch", "--driver", "LATCH"}, "need their own names"},
		{[]string{"install", "--", `--state-dir=C:\a "b"`}, "quotes and line breaks"},
	} {
		_, err := parse(c.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parse(%q) = %v, want an error saying %q", c.args, err, c.want)
		}
	}
}

func TestCommandOutsideWindows(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("service control is exercised on Windows only by hand (needs Administrator)")
	}
	var out bytes.Buffer
	if err := commandTo([]string{"install"}, &out, io.Discard); err != ErrNotWindows {
		t.Fatalf("install = %v, want ErrNotWindows", err)
	}
	if err := commandTo([]string{"bogus"}, &out, io.Discard); err == nil || err == ErrNotWindows {
		t.Fatalf("bogus verb = %v, want a usage error", err)
	}
	if err := commandTo([]string{"help"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "latch service <command>") {
		t.Fatalf("help = %v, %q", err, out.String())
	}
	if isSvc, err := RunIfService(nil); isSvc || err != nil {
		t.Fatalf("RunIfService = %v, %v", isSvc, err)
	}
	if DataDir() != "/var/lib/latch" {
		t.Fatalf("DataDir = %q", DataDir())
	}
}
