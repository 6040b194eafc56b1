package weblaunch

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOpenKeepsTheTokenOffTheCommandLine runs Open (what `latch web open` and latch
// notify's Open button use) with a fake xdg-open that records its command line and
// the page it is given: no token on the command line, the page private (0600 in a
// 0700 directory) and holding the token, and gone after the keep time.
func TestOpenKeepsTheTokenOffTheCommandLine(t *testing.T) {
	dir := t.TempDir()
	bin, rec, run := filepath.Join(dir, "bin"), filepath.Join(dir, "rec"), filepath.Join(dir, "run")
	for _, d := range []string{bin, rec, run} {
		os.Mkdir(d, 0o700)
	}
	script := `#!/bin/sh
f="${1#file://}"
stat -c %a "$f" > "` + rec + `/mode"
stat -c %a "$(dirname "$f")" > "` + rec + `/dirmode"
cp "$f" "` + rec + `/page.html"
printf '%s\n' "$@" > "` + rec + `/argv"
`
	if err := os.WriteFile(filepath.Join(bin, "xdg-open"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	t.Setenv("XDG_RUNTIME_DIR", run)
	const token = "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg"
	if err := open("http://127.0.0.1:7654/login?token="+token, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var argv []byte
	for deadline := time.Now().Add(10 * time.Second); len(argv) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		argv, _ = os.ReadFile(filepath.Join(rec, "argv"))
	}
	if len(argv) == 0 {
		t.Fatal("xdg-open was not run")
	}
	if strings.Contains(string(argv), token) || strings.Contains(string(argv), "login?") {
		t.Fatalf("xdg-open's command line holds the token: %q", argv)
	}
	file := strings.TrimPrefix(strings.TrimSpace(string(argv)), "file://")
	if !strings.HasPrefix(file, run+"/latch-login-") {
		t.Errorf("xdg-open got %q, want a page under $XDG_RUNTIME_DIR", argv)
	}
	mode, _ := os.ReadFile(filepath.Join(rec, "mode"))
	dirMode, _ := os.ReadFile(filepath.Join(rec, "dirmode"))
	if strings.TrimSpace(string(mode)) != "600" || strings.TrimSpace(string(dirMode)) != "700" {
		t.Errorf("page mode %q in a directory of mode %q, want 600 in 700", mode, dirMode)
	}
	page, _ := os.ReadFile(filepath.Join(rec, "page.html"))
	if !strings.Contains(string(page), `<form method="post" action="http://127.0.0.1:7654/login"><input type="hidden" name="token" value="`+token+`">`) {
		t.Errorf("page %s: want a form posting the token to /login", page)
	}
	// The page goes away, with its directory.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Dir(file)); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the login page %s is still there", file)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPageRefusesWhatIsNotALoginURL: a URL that is not the UI's login URL gets a
// clear error and no page; what the page holds is escaped.
func TestPageRefusesWhatIsNotALoginURL(t *testing.T) {
	for _, u := range []string{"", "file:///etc/passwd", "http://127.0.0.1:7654/", "http://127.0.0.1:7654/login",
		"javascript:alert(1)", "http://127.0.0.1:7654/other?token=x"} {
		if p, err := Page(u); err == nil {
			t.Errorf("Page(%q) = %s, want an error", u, p)
		}
	}
	p, err := Page(`https://127.0.0.1:7654/login?token="><script>x</script>`)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(p), `"><script>x`) || !strings.Contains(string(p), `action="https://127.0.0.1:7654/login"`) {
		t.Errorf("page %s: want the token escaped and https kept", p)
	}
}
