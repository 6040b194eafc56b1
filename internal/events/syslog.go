package events

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Syslog sink reconnection backoff and timeouts.
const (
	syslogMinBackoff   = 100 * time.Millisecond
	syslogMaxBackoff   = 10 * time.Second
	syslogDialTimeout  = 3 * time.Second
	syslogWriteTimeout = 5 * time.Second
)

// facilityDaemon is the syslog facility of every message (3, "daemon").
const facilityDaemon = 3

// SyslogSink sends each event as an RFC 5424 message: PRI (facility daemon; severity
// notice for denials and degradations, info otherwise), VERSION 1, TIMESTAMP (the
// event's time), HOSTNAME, APP-NAME "latch", PROCID (the daemon's pid), MSGID (the
// event type), no STRUCTURED-DATA, and the event's JSON as MSG. Over TCP and TLS each
// message is framed by octet counting (RFC 6587 3.4.1: "LEN SP MSG"); over UDP and unix
// sockets it is one datagram.
//
// While the collector cannot be reached, events are dropped and counted, and the sink
// reconnects with exponential backoff (100ms doubling to 10s). TCP has no
// acknowledgement: messages the kernel accepted just before a collector died are lost
// without notice (RFC 6587's limit, not latch's).
type SyslogSink struct {
	network, address string
	tlsConf          *tls.Config
	hostname         string
	pid              string
	Logf             func(string, ...any)

	conn    net.Conn
	dead    *atomic.Bool // set by the connection's reader when the collector closes it
	backoff time.Duration
	retryAt time.Time
}

// NewSyslogSink parses a collector URL: tcp://HOST:PORT, udp://HOST:PORT,
// tls://HOST:PORT (verified against the system's roots; set TLSConfig to change) or
// unix:///dev/log. It does not connect yet.
func NewSyslogSink(rawURL, hostname string, logf func(string, ...any)) (*SyslogSink, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("events syslog URL %q: %v", rawURL, err)
	}
	s := &SyslogSink{hostname: syslogHostname(hostname), pid: strconv.Itoa(os.Getpid()), Logf: logf}
	switch u.Scheme {
	case "tcp", "udp", "tls":
		if u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("events syslog URL %q: want %s://HOST:PORT", rawURL, u.Scheme)
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || port == "" {
			return nil, fmt.Errorf("events syslog URL %q: want %s://HOST:PORT", rawURL, u.Scheme)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("events syslog URL %q: port %q: want 1-65535", rawURL, port)
		}
		s.network, s.address = u.Scheme, u.Host
		if u.Scheme == "tls" {
			s.network = "tcp"
			s.tlsConf = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		}
	case "unix":
		if u.Host != "" || u.Path == "" {
			return nil, fmt.Errorf("events syslog URL %q: want unix:///PATH, e.g. unix:///dev/log", rawURL)
		}
		s.network, s.address = "unixgram", u.Path
	default:
		return nil, fmt.Errorf("events syslog URL %q: scheme %q: want tcp, udp, tls or unix", rawURL, u.Scheme)
	}
	return s, nil
}

// TLSConfig sets the TLS configuration of a tls:// sink (for example a private CA).
func (s *SyslogSink) TLSConfig(c *tls.Config) { s.tlsConf = c }

// Name is "syslog".
func (s *SyslogSink) Name() string { return "syslog" }

// syslogHostname makes a HOSTNAME field: printable ASCII without spaces, at most 255.
func syslogHostname(h string) string {
	var b strings.Builder
	for _, r := range h {
		if r > 32 && r < 127 {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()[:min(b.Len(), 255)]
}

func (s *SyslogSink) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// framed reports whether messages need octet-counting framing (stream transports).
func (s *SyslogSink) framed() bool { return s.network == "tcp" }

func (s *SyslogSink) dial() error {
	d := net.Dialer{Timeout: syslogDialTimeout}
	var c net.Conn
	var err error
	switch {
	case s.tlsConf != nil:
		c, err = tls.DialWithDialer(&d, "tcp", s.address, s.tlsConf)
	case s.network == "unixgram":
		c, err = d.Dial("unixgram", s.address)
		if err != nil { // some systems' /dev/log is a stream socket
			if c2, err2 := d.Dial("unix", s.address); err2 == nil {
				c, err = c2, nil
				s.network = "unix"
			}
		}
	default:
		c, err = d.Dial(s.network, s.address)
	}
	if err != nil {
		return err
	}
	s.conn = c
	dead := &atomic.Bool{}
	s.dead = dead
	if s.network == "tcp" || s.network == "unix" {
		// A collector never writes to us: a read that returns means it closed.
		go func() {
			var buf [512]byte
			for {
				if _, err := c.Read(buf[:]); err != nil {
					dead.Store(true)
					return
				}
			}
		}()
	}
	return nil
}

func (s *SyslogSink) disconnect() {
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// connected makes sure there is a connection, dialing if the backoff allows.
func (s *SyslogSink) connected() bool {
	if s.conn != nil && s.dead.Load() {
		s.logf("events syslog %s://%s: the collector closed the connection", s.network, s.address)
		s.disconnect()
		s.failed()
	}
	if s.conn != nil {
		return true
	}
	if time.Now().Before(s.retryAt) {
		return false
	}
	if err := s.dial(); err != nil {
		s.failed()
		s.logf("events syslog %s: %v (retrying in %v)", s.address, err, s.backoff)
		return false
	}
	s.backoff = 0
	return true
}

func (s *SyslogSink) failed() {
	s.backoff = min(max(2*s.backoff, syslogMinBackoff), syslogMaxBackoff)
	s.retryAt = time.Now().Add(s.backoff)
}

// Format returns the RFC 5424 message for one event line (without framing).
func (s *SyslogSink) Format(line []byte) []byte {
	event, ts, action := headerFields(line)
	sev := 6 // info
	if event == BackendDegraded || (event == ConnectionDecided && action != "allow") {
		sev = 5 // notice
	}
	msgid := "-"
	if event != "" && len(event) <= 32 {
		msgid = event
	}
	stamp := "-"
	if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
		stamp = t.UTC().Format("2006-01-02T15:04:05.000000Z07:00")
	}
	b := make([]byte, 0, len(line)+96)
	b = fmt.Appendf(b, "<%d>1 %s %s latch %s %s - ", facilityDaemon*8+sev, stamp, s.hostname, s.pid, msgid)
	return append(b, line...)
}

// headerFields reads the event type, time and decision action of a document the hub
// encoded, without decoding it: in encoding/json's output a key in quotes followed by
// a colon cannot occur inside a string value (its quotes would be escaped).
func headerFields(line []byte) (event, ts, action string) {
	get := func(key string) string {
		i := bytes.Index(line, []byte(key))
		if i < 0 {
			return ""
		}
		rest := line[i+len(key):]
		j := bytes.IndexByte(rest, '"')
		if j < 0 || bytes.IndexByte(rest[:j], '\\') >= 0 {
			return ""
		}
		return string(rest[:j])
	}
	return get(`"event":"`), get(`"time":"`), get(`"decision":{"action":"`)
}

// Run implements Sink. What is queued goes out in one write (stream transports) and
// then the sink waits Coalesce for more.
func (s *SyslogSink) Run(lines <-chan []byte, c *Counters) {
	defer s.disconnect()
	var buf []byte
	var batch [][]byte
	for line := range lines {
		batch = append(batch[:0], line)
		for n := len(lines); n > 0; n-- {
			l, ok := <-lines
			if !ok {
				break
			}
			batch = append(batch, l)
		}
		s.send(batch, &buf, c)
		time.Sleep(Coalesce)
	}
}

// send writes a batch: framed in one write on a stream, one datagram each otherwise.
func (s *SyslogSink) send(batch [][]byte, buf *[]byte, c *Counters) {
	if !s.connected() {
		c.Dropped.Add(uint64(len(batch)))
		return
	}
	write := func(b []byte, n int) bool {
		s.conn.SetWriteDeadline(time.Now().Add(syslogWriteTimeout))
		if _, err := s.conn.Write(b); err != nil {
			s.logf("events syslog %s: %v (reconnecting)", s.address, err)
			s.disconnect()
			s.failed()
			c.Dropped.Add(uint64(n))
			return false
		}
		c.Sent.Add(uint64(n))
		return true
	}
	if s.framed() {
		b := (*buf)[:0]
		for _, line := range batch {
			msg := s.Format(line)
			b = strconv.AppendInt(b, int64(len(msg)), 10)
			b = append(b, ' ')
			b = append(b, msg...)
		}
		*buf = b
		write(b, len(batch))
		return
	}
	for i, line := range batch {
		if !write(s.Format(line), 1) {
			c.Dropped.Add(uint64(len(batch) - i - 1))
			return
		}
	}
}
