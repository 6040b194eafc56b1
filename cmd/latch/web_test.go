//go:build linux

package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// keyMeta finds the session key in the page /login answers.
var keyMeta = regexp.MustCompile(`<meta name="latch-key" content="([A-Za-z0-9_-]{43})">`)

// freePort returns a loopback address with a port nobody listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestWebURLLogsIn: `latch web url` prints a URL that logs a browser in to the daemon's
// web UI once; without --web it says how to turn the UI on.
func TestWebURLLogsIn(t *testing.T) {
	dir, err := os.MkdirTemp("", "latch-web-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	addr := freePort(t)
	sock := filepath.Join(dir, "latch.sock")
	startDaemon(t, filepath.Join(dir, "state"), sock, "--web", addr)
	env := []string{"LATCH_API=" + sock}
	r := runLatch(t, env, nil, "web", "url")
	u := strings.TrimSpace(r.stdout)
	if r.code != 0 || !strings.HasPrefix(u, "http://"+addr+"/login?token=") {
		t.Fatalf("latch web url: %d %q %q", r.code, r.stdout, r.stderr)
	}
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	k := keyMeta.FindSubmatch(body)
	if resp.StatusCode != 200 || k == nil {
		t.Fatalf("after login: %d %s, want the page with the session key", resp.StatusCode, body)
	}
	// The cookie alone opens nothing; with the key, the API answers.
	resp, err = c.Get("http://" + addr + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status with the cookie alone: %d, want 403", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/api/v1/status", nil)
	req.Header.Set("X-Latch-Key", string(k[1]))
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"backend":"none`) {
		t.Fatalf("status through the web UI: %d %s", resp.StatusCode, body)
	}
	// The URL works once.
	resp, err = http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("second use of the login URL: %d, want 401", resp.StatusCode)
	}

	sock2 := filepath.Join(dir, "latch2.sock")
	startDaemon(t, filepath.Join(dir, "state2"), sock2)
	r = runLatch(t, []string{"LATCH_API=" + sock2}, nil, "web", "url")
	if r.code != 1 || !strings.Contains(r.stderr, "the web UI is off: start the daemon with --web") {
		t.Errorf("latch web url without --web: %d %q", r.code, r.stderr)
	}
}

func TestWebFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--web", "0.0.0.0:7654"},
		{"--web", "198.18.0.1:7654"},
		{"--web", "198.18.0.1:7654", "--web-allow-remote"},
		{"--web", "localhost:7654"},
		{"--web-allow-remote"},
		{"--web", "127.0.0.1:7654", "--web-cert", "c.pem"},
	} {
		if _, err := parseDaemonFlags(args); err == nil {
			t.Errorf("daemon %v: accepted", args)
		}
	}
	o, err := parseDaemonFlags([]string{"--web", "198.18.0.1:7654", "--web-allow-remote", "--web-cert", "c", "--web-key", "k"})
	if err != nil || o.Web != "198.18.0.1:7654" {
		t.Errorf("remote with TLS: %+v, %v", o, err)
	}
}

// TestWebTLS: with --web-cert and --web-key the UI is served over https, the login URL
// says so, and the session cookie is Secure.
func TestWebTLS(t *testing.T) {
	dir, err := os.MkdirTemp("", "latch-webtls-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "latch test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	addr := freePort(t)
	sock := filepath.Join(dir, "latch.sock")
	startDaemon(t, filepath.Join(dir, "state"), sock, "--web", addr, "--web-allow-remote", "--web-cert", certFile, "--web-key", keyFile)
	r := runLatch(t, []string{"LATCH_API=" + sock}, nil, "web", "url")
	u := strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(u, "https://"+addr+"/login?token=") {
		t.Fatalf("latch web url: %q %q", r.stdout, r.stderr)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var sc *http.Cookie
	for _, x := range resp.Cookies() {
		sc = x
	}
	if resp.StatusCode != http.StatusOK || sc == nil || !sc.Secure || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode {
		t.Errorf("login over TLS: %d, cookie %+v; want 200 and a Secure, HttpOnly, SameSite=Strict cookie", resp.StatusCode, sc)
	}
	// Plain http to the TLS port is not served.
	if resp, err := http.Get("http://" + addr + "/"); err == nil {
		if resp.StatusCode == 200 {
			t.Errorf("plain http answered 200")
		}
		resp.Body.Close()
	}
}

// TestWebOpenKeepsTheTokenOffCommandLines: /proc/PID/cmdline is world-readable, so
// `latch web open` must not hand the login token to xdg-open (or the browser it starts)
// as an argument. It hands over a file:// page, mode 0600 in a 0700 directory, that
// logs the browser in.
func TestWebOpenKeepsTheTokenOffCommandLines(t *testing.T) {
	dir, err := os.MkdirTemp("", "latch-webopen-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	addr := freePort(t)
	sock := filepath.Join(dir, "latch.sock")
	startDaemon(t, filepath.Join(dir, "state"), sock, "--web", addr)
	// A fake xdg-open records its arguments and what the file it gets holds.
	bin := filepath.Join(dir, "bin")
	rec := filepath.Join(dir, "rec")
	os.MkdirAll(bin, 0o755)
	os.MkdirAll(rec, 0o755)
	script := `#!/bin/sh
printf '%s\n' "$0" "$@" > "` + rec + `/argv"
f="${1#file://}"
stat -c %a "$f" > "` + rec + `/mode"
stat -c %a "$(dirname "$f")" > "` + rec + `/dirmode"
cp "$f" "` + rec + `/page.html"
`
	if err := os.WriteFile(filepath.Join(bin, "xdg-open"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	runtime := filepath.Join(dir, "run")
	os.Mkdir(runtime, 0o700)
	env := []string{"LATCH_API=" + sock, "PATH=" + bin + ":" + os.Getenv("PATH"), "XDG_RUNTIME_DIR=" + runtime}
	r := runLatch(t, env, nil, "web", "open")
	if r.code != 0 {
		t.Fatalf("latch web open: %d %q %q", r.code, r.stdout, r.stderr)
	}
	var argv []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if argv, err = os.ReadFile(filepath.Join(rec, "page.html")); err == nil && len(argv) > 0 {
			break
		}
	}
	argv, _ = os.ReadFile(filepath.Join(rec, "argv"))
	if len(argv) == 0 {
		t.Fatal("xdg-open was not run")
	}
	if strings.Contains(string(argv), "token") || strings.Contains(string(argv), "/login?") {
		t.Fatalf("xdg-open's command line (readable by every local user) holds the login URL: %q", argv)
	}
	if strings.Contains(r.stdout+r.stderr, "token") {
		t.Errorf("latch web open printed the token: %q %q", r.stdout, r.stderr)
	}
	args := strings.Split(strings.TrimSpace(string(argv)), "\n")
	if len(args) != 2 || !strings.HasPrefix(args[1], "file://"+runtime+"/") {
		t.Errorf("xdg-open %q: want one file:// URL under $XDG_RUNTIME_DIR", args)
	}
	mode, _ := os.ReadFile(filepath.Join(rec, "mode"))
	dirMode, _ := os.ReadFile(filepath.Join(rec, "dirmode"))
	if strings.TrimSpace(string(mode)) != "600" || strings.TrimSpace(string(dirMode)) != "700" {
		t.Errorf("login page mode %q in a directory of mode %q, want 600 in 700", mode, dirMode)
	}
	page, _ := os.ReadFile(filepath.Join(rec, "page.html"))
	// The page posts the token to the UI's /login (so the token is not in the
	// browser's history either); do what the browser does with it.
	m := regexp.MustCompile(`<form method="post" action="([^"]+)"><input type="hidden" name="token" value="([^"]+)">`).FindSubmatch(page)
	if m == nil || string(m[1]) != "http://"+addr+"/login" {
		t.Fatalf("login page %q: want a form posting the token to http://%s/login", page, addr)
	}
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	req, _ := http.NewRequest("POST", string(m[1]), strings.NewReader(url.Values{"token": {string(m[2])}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "null") // a file:// page's origin
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	k := keyMeta.FindSubmatch(body)
	if resp.StatusCode != 200 || k == nil {
		t.Fatalf("posting the page's form: %d %s", resp.StatusCode, body)
	}
	req, _ = http.NewRequest("GET", "http://"+addr+"/api/v1/status", nil)
	req.Header.Set("X-Latch-Key", string(k[1]))
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"backend":"none`) {
		t.Fatalf("status through the web UI after the page's login: %d %s", resp.StatusCode, body)
	}
}
