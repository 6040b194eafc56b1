package strictjson

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestObject(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{`{"a":1,"b":"x"}`, ""},
		{` {} `, ""},
		{``, "empty"},
		{`[]`, "want a JSON object, got an array"},
		{`null`, "want a JSON object, got null"},
		{`"a"`, "want a JSON object, got a string"},
		{`{"a":1,"a":2}`, `field "a" given twice`},
		{`{"A":1}`, `unknown field "A" (did you mean "a"?`},
		{`{"c":1}`, `unknown field "c" (want a, b)`},
		{`{"a":1} {}`, "trailing data"},
		{`{"a":1} x`, "trailing data"},
		{`{"a":1`, "unexpected EOF"},
		{"{\n\"a\":}", "malformed JSON at line 2"},
	} {
		_, err := Object([]byte(tc.in), "a", "b")
		if tc.err == "" {
			if err != nil {
				t.Errorf("Object(%q) = %v, want no error", tc.in, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Object(%q) = %v, want an error containing %q", tc.in, err, tc.err)
		}
	}
	m, err := Object([]byte(`{"a": null, "b": "x\u0000"}`), "a", "b")
	if err != nil || !IsNull(m["a"]) {
		t.Fatalf("Object: %v %v", m, err)
	}
	if s, err := String(m["b"]); err != nil || s != "x\x00" {
		t.Errorf("String(%s) = %q, %v", m["b"], s, err)
	}
	if _, err := String(m["a"]); err == nil {
		t.Error("String(null) accepted")
	}
}

// FuzzObject: whatever Object accepts is one valid JSON object whose keys are all
// allowed, each once, exactly as spelt; it never panics.
func FuzzObject(f *testing.F) {
	for _, s := range []string{`{"a":1,"b":"x"}`, `{"a":1,"a":2}`, `{"A":1}`, `{"a":1} x`, `[]`, `{"a":{"a":1,"a":2}}`, `{"b":"\u0061"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Object(data, "a", "b")
		if err != nil {
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
		var generic map[string]json.RawMessage
		if err := json.Unmarshal(data, &generic); err != nil {
			t.Fatalf("accepted %q, which is not an object: %v", data, err)
		}
		for k := range m {
			if k != "a" && k != "b" {
				t.Fatalf("accepted key %q", k)
			}
		}
		if len(generic) != len(m) {
			t.Fatalf("accepted %q: %d members, encoding/json sees %d", data, len(m), len(generic))
		}
	})
}
