package api

import (
	"encoding/json"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// FuzzRawTextRoundTrip: any exe, user, cmdline and host, valid UTF-8 or not, comes out
// of a JSON round trip of Prompt and Conn byte for byte; and decoding arbitrary JSON
// never lets raw change a field into text it did not stand for.
func FuzzRawTextRoundTrip(f *testing.F) {
	f.Add("/tmp/a\xff", "us\xfeer", "a\xc3 b", "h\xe2\x80.test", `{"exe":"x","raw":{"exe":"/w=="}}`)
	f.Add("/usr/bin/curl", "root", "", "www.example.com", `{"exe":"\ufffd","raw":{"exe":"/w==","user":"//4="}}`)
	f.Fuzz(func(t *testing.T, exe, user, cmdline, host, doc string) {
		p := Prompt{Exe: exe, User: user, Cmdline: cmdline, Host: host}
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var q Prompt
		if err := json.Unmarshal(b, &q); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if q.Exe != exe || q.User != user || q.Cmdline != cmdline || q.Host != host {
			t.Fatalf("Prompt round trip through %s: %q %q %q %q", b, q.Exe, q.User, q.Cmdline, q.Host)
		}
		c := Conn{Exe: exe, User: user, Cmdline: cmdline, Host: host, Verdict: engine.Deny}
		if b, err = json.Marshal(c); err != nil {
			t.Fatal(err)
		}
		var d Conn
		if err := json.Unmarshal(b, &d); err != nil || d.Exe != exe || d.User != user || d.Cmdline != cmdline || d.Host != host {
			t.Fatalf("Conn round trip through %s: %+v, %v", b, d, err)
		}

		var plain, withRaw struct {
			Exe  string `json:"exe"`
			User string `json:"user"`
		}
		if json.Unmarshal([]byte(doc), &plain) != nil {
			return
		}
		var r Prompt
		if json.Unmarshal([]byte(doc), &r) != nil {
			return
		}
		withRaw.Exe, withRaw.User = r.Exe, r.User
		if asJSONText([]byte(withRaw.Exe)) != plain.Exe || asJSONText([]byte(withRaw.User)) != plain.User {
			t.Fatalf("%s: raw turned exe %q into %q, user %q into %q", doc, plain.Exe, withRaw.Exe, plain.User, withRaw.User)
		}
	})
}
