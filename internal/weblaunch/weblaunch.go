// Package weblaunch opens the web UI's one-time login URL in the user's browser
// without putting the token on any command line: /proc/PID/cmdline is readable by
// every local user, for xdg-open and for the browser it starts, so a token there
// could be read and used first by someone else. Instead the token goes into a page
// (mode 0600, in a fresh 0700 directory under $XDG_RUNTIME_DIR) that posts it to the
// UI's /login, and the browser is given that page's file:// URL. The page is removed
// after Keep.
package weblaunch

import (
	"fmt"
	"html"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// Keep is how long the login page stays on disk for the browser to read it.
const Keep = 30 * time.Second

// Page is the HTML page that logs a browser in with loginURL's token: a form posting
// the token to loginURL's /login, submitted by script as the page loads (with a
// button when scripts are off). Posting keeps the token out of the browser's history.
func Page(loginURL string) ([]byte, error) {
	u, err := url.Parse(loginURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "/login" {
		return nil, fmt.Errorf("login URL %q: want http(s)://HOST:PORT/login?token=T", loginURL)
	}
	token := u.Query().Get("token")
	if token == "" {
		return nil, fmt.Errorf("login URL %q: no token", loginURL)
	}
	action := u.Scheme + "://" + u.Host + "/login"
	return []byte(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer"><title>latch: logging in</title></head>
<body>
<form method="post" action="` + html.EscapeString(action) + `"><input type="hidden" name="token" value="` + html.EscapeString(token) + `"><noscript><button type="submit">Log in to latch</button></noscript></form>
<script>document.forms[0].submit();</script>
</body></html>
`), nil
}

// WritePage writes Page(loginURL) to a new file, mode 0600, in a new directory, mode
// 0700, under $XDG_RUNTIME_DIR (or the temporary directory when that is unset). It
// returns the file and the directory to remove afterwards.
func WritePage(loginURL string) (file, dir string, err error) {
	page, err := Page(loginURL)
	if err != nil {
		return "", "", err
	}
	base := os.Getenv("XDG_RUNTIME_DIR")
	if st, err := os.Stat(base); base == "" || err != nil || !st.IsDir() {
		base = os.TempDir()
	}
	dir, err = os.MkdirTemp(base, "latch-login-")
	if err != nil {
		return "", "", fmt.Errorf("login page: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("login page: %w", err)
	}
	file = filepath.Join(dir, "login.html")
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("login page: %w", err)
	}
	_, err = f.Write(page)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("login page %s: %w", file, err)
	}
	return file, dir, nil
}

// Open opens loginURL in the user's browser: it writes the login page (WritePage),
// runs xdg-open with the page's file:// URL, and removes the page after Keep, also
// when this process has exited by then.
func Open(loginURL string) error { return open(loginURL, Keep) }

func open(loginURL string, keep time.Duration) error {
	file, dir, err := WritePage(loginURL)
	if err != nil {
		return err
	}
	// The remover runs in its own session, so that it outlives `latch web open`;
	// its command line names the directory only.
	rm := exec.Command("/bin/sh", "-c", `sleep "$1"; exec rm -rf -- "$2"`, "latch-login-cleanup",
		strconv.FormatFloat(keep.Seconds(), 'f', 3, 64), dir)
	detach(rm)
	if err := rm.Start(); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("login page: starting its removal: %w", err)
	}
	go rm.Wait()
	u := (&url.URL{Scheme: "file", Path: file}).String()
	cmd := exec.Command("xdg-open", u)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("xdg-open: %w", err)
	}
	go cmd.Wait()
	return nil
}
