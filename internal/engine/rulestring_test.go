package engine

import (
	"strings"
	"testing"
)

// TestRuleStringEscapes: a rule's one-line form shows values from outside escaped and
// quoted where they hold spaces, so a rule is one line that shows what it matches and
// an app cannot pass for more fields.
func TestRuleStringEscapes(t *testing.T) {
	r := Rule{ID: 4, Action: Allow, App: "/tmp/x\x1b[2K\rfirefox user=root", User: "mal\u202Elory",
		Service: "svc\x00", Note: "first\nsecond \"quoted\""}
	got := r.String()
	want := `#4 allow any any app="/tmp/x\x1b[2K\x0dfirefox user=root" service=svc\x00 user=mal\u{202E}lory # "first\x0asecond \"quoted\""`
	if got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
	if strings.ContainsAny(got, "\x1b\r\n\x00\u202E") {
		t.Errorf("String() holds a raw control or bidi character: %q", got)
	}
}
