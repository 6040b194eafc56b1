package events

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// TestSyslogTLS sends over tls:// to a collector with a certificate the sink is told
// to trust, and checks that one it does not trust gets nothing.
func TestSyslogTLS(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "collector"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					n, err := r.ReadString(' ')
					if err != nil {
						return
					}
					size, _ := strconv.Atoi(strings.TrimSpace(n))
					buf := make([]byte, size)
					if _, err := io.ReadFull(r, buf); err != nil {
						return
					}
					got <- string(buf)
				}
			}()
		}
	}()
	send := func(trust bool) *Hub {
		s, err := NewSyslogSink("tls://"+l.Addr().String(), "h", t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		if trust {
			pool := x509.NewCertPool()
			pool.AddCert(cert)
			s.TLSConfig(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
		}
		h := NewHub(Config{HostID: "id", HostName: "h"}, s)
		req := testRequest(1)
		h.Decided(&req, engine.Verdict{Action: engine.Deny, Reason: engine.ReasonRule, RuleID: 2}, 0)
		return h
	}
	h := send(true)
	select {
	case m := <-got:
		if !strings.HasPrefix(m, "<29>1 ") || !strings.Contains(m, `"action":"deny"`) {
			t.Errorf("message %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing over TLS")
	}
	h.Close(5 * time.Second)
	// Not trusted (the system roots do not know this certificate): dropped, counted.
	h = send(false)
	h.Close(5 * time.Second)
	if st := h.Stats()[0]; st.Sent != 0 || st.Dropped != 1 {
		t.Errorf("untrusted collector: %+v; want the event dropped", st)
	}
	select {
	case m := <-got:
		t.Errorf("an untrusted collector got %q", m)
	default:
	}
}
