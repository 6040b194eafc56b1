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
