package main

import (
	"strings"
	"testing"
)

func TestObserveFlags(t *testing.T) {
	o, err := parseDaemonFlags([]string{"--metrics", "127.0.0.1:9184", "--events-file", "/tmp/x", "--events-file-max-size", "64K",
		"--events-file-keep", "3", "--events-syslog", "udp://127.0.0.1:514", "--host-id", "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Metrics != "127.0.0.1:9184" || o.EventsFile != "/tmp/x" || o.EventsFileMaxSize != 64<<10 || o.EventsFileKeep != 3 ||
		o.EventsSyslog != "udp://127.0.0.1:514" || o.HostID != "h1" {
		t.Errorf("parsed %+v", o.observeOptions)
	}
	if o, err := parseDaemonFlags(nil); err != nil || o.Metrics != "" || o.EventsFile != "" || o.EventsSyslog != "" {
		t.Errorf("defaults: %+v %v; want everything off", o, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--metrics", "0.0.0.0:9184"}, "not a loopback address"},
		{[]string{"--metrics", ":9184"}, "not a loopback address"},
		{[]string{"--metrics", "198.18.0.1:9184"}, "--metrics-allow-remote"},
		{[]string{"--metrics", "example.com:9184"}, "loopback IP"},
		{[]string{"--metrics", "127.0.0.1"}, "HOST:PORT"},
		{[]string{"--metrics", "127.0.0.1:http"}, "port"},
		{[]string{"--events-syslog", "syslog.example.com:514"}, "--events-syslog"},
		{[]string{"--events-file-max-size", "10"}, "at least 4096"},
		{[]string{"--events-file-max-size", "5X"}, "--events-file-max-size"},
		{[]string{"--events-file-keep", "0"}, "--events-file-keep"},
		{[]string{"--host-id", "a\nb"}, "control characters"},
	} {
		_, err := parseDaemonFlags(c.args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v; want an error with %q", c.args, err, c.want)
		}
	}
	for _, ok := range [][]string{{"--metrics", "[::1]:9184"}, {"--metrics", "localhost:9184"}, {"--metrics", "127.0.0.2:1"},
		{"--metrics", "0.0.0.0:9184", "--metrics-allow-remote"}} {
		if _, err := parseDaemonFlags(ok); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
}
