package config

import (
	"errors"
	"flag"
	"testing"
)

// FuzzApply: any bytes give either flags set from top-level keys the flag set knows,
// or a *config.Error with a line inside the file, and then no flag changed.
func FuzzApply(f *testing.F) {
	for _, s := range []string{
		"inbound = true\nqueue = 7\nprompt-timeout = \"45s\"\n",
		"state-dir = '/x'\nratio = 1e3\nmax-history = 0x10\n",
		"[t]\na=1\n", "a.b = 1", "queue = [1,2]", "x = 1979-05-27T07:32:00Z",
		"queue = \"\\u0000\"", "inbound = true\ninbound = false\n", "\"\" = 1",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tf := newTestFlags()
		before := map[string]string{}
		tf.fs.VisitAll(func(fl *flag.Flag) { before[fl.Name] = fl.Value.String() })
		src, err := Apply(tf.fs, "f.toml", data, nil, "config")
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %v is not a *config.Error", err, err)
			}
			lines := 1
			for _, b := range data {
				if b == '\n' {
					lines++
				}
			}
			if ce.Line < 0 || ce.Line > lines {
				t.Fatalf("error line %d outside a %d-line file: %v", ce.Line, lines, err)
			}
			tf.fs.VisitAll(func(fl *flag.Flag) {
				if fl.Value.String() != before[fl.Name] {
					t.Fatalf("a rejected file changed --%s from %q to %q", fl.Name, before[fl.Name], fl.Value.String())
				}
			})
			return
		}
		for k := range src.Lines {
			if tf.fs.Lookup(k) == nil || k == "config" {
				t.Fatalf("accepted key %q that is no settable flag", k)
			}
		}
	})
}
