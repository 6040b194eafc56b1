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
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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
	if resp.StatusCode != 200 || !strings.Contains(string(body), `<script type="module" src="/app.js">`) {
		t.Fatalf("after login: %d %s", resp.StatusCode, body)
	}
	resp, err = c.Get("http://" + addr + "/api/v1/status")
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
	if resp.StatusCode != http.StatusSeeOther || sc == nil || !sc.Secure || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode {
		t.Errorf("login over TLS: %d, cookie %+v; want 303 and a Secure, HttpOnly, SameSite=Strict cookie", resp.StatusCode, sc)
	}
	// Plain http to the TLS port is not served.
	if resp, err := http.Get("http://" + addr + "/"); err == nil {
		if resp.StatusCode == 200 {
			t.Errorf("plain http answered 200")
		}
		resp.Body.Close()
	}
}
