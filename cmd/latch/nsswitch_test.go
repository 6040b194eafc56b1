package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSharedNamesWarning: the daemon warns that hostname lists match nothing by name
// when programs resolve through nss-resolve and shared names do not match, and only then.
func TestSharedNamesWarning(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fedora := write("fedora", "passwd: files systemd\nhosts:      files myhostname resolve [!UNAVAIL=return] dns\n")
	debian := write("debian", "# resolve is not used\nhosts:          files dns\nnetworks: files resolve\n")
	commented := write("commented", "hosts: files dns # resolve\n")
	for _, tc := range []struct {
		path   string
		lists  []string
		shared bool
		warn   bool
	}{
		{fedora, []string{"ads"}, false, true},
		{fedora, []string{"ads"}, true, false},
		{fedora, nil, false, false},
		{debian, []string{"ads"}, false, false},
		{commented, []string{"ads"}, false, false},
		{filepath.Join(dir, "missing"), []string{"ads"}, false, false},
	} {
		w := sharedNamesWarning(tc.lists, tc.shared, tc.path)
		if (w != "") != tc.warn || (w != "" && !strings.Contains(w, "lists ads name hostnames")) {
			t.Errorf("%s lists %v shared %v: %q", filepath.Base(tc.path), tc.lists, tc.shared, w)
		}
	}
}

// TestSharedNamesWarningOnChange: the warning is logged when it appears or its
// lists change, not again on every list update, and again after it went away.
func TestSharedNamesWarningOnChange(t *testing.T) {
	var c onChange
	var got []string
	log := func(s string) { got = append(got, s) }
	for _, m := range []string{"", "w1", "w1", "w1", "w2", "w2", "", "", "w2"} {
		c.report(m, log)
	}
	if strings.Join(got, ",") != "w1,w2,w2" {
		t.Errorf("logged %q, want w1, w2, w2", got)
	}
}

// TestServiceNames: service names end at white space or '['; actions are skipped.
func TestServiceNames(t *testing.T) {
	for in, want := range map[string]string{
		" files myhostname resolve [!UNAVAIL=return] dns": "files,myhostname,resolve,dns",
		"files resolve[!UNAVAIL=return] dns":              "files,resolve,dns",
		"files [ NOTFOUND = return ]resolve":              "files,resolve",
		"files [resolve":                                  "files",
		"\tfiles\tdns ":                                   "files,dns",
	} {
		if got := strings.Join(serviceNames(in), ","); got != want {
			t.Errorf("serviceNames(%q) = %q, want %q", in, got, want)
		}
	}
}
